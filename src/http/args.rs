//! The listener flags every program shares; each program gives its own body limit and budget.

use super::Limits;
use crate::args::{ArgError, seconds};

/// The bounds of a program's listeners (see [`Limits`]); each program sets its own body
/// limit and budget.
#[derive(clap::Args)]
pub(crate) struct LimitArgs {
    /// Seconds a client has to finish the TLS handshake, and then to send its request headers.
    #[arg(long, env = "POD_IDENTITY_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    pub(crate) header_read_timeout: f64,
    /// Seconds a whole request (its body and the answer) may take; beyond it, 408.
    #[arg(long, env = "POD_IDENTITY_REQUEST_TIMEOUT", default_value_t = 10.0)]
    pub(crate) request_timeout: f64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, env = "POD_IDENTITY_IDLE_TIMEOUT", default_value_t = 60.0)]
    pub(crate) idle_timeout: f64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT; then the program exits.
    #[arg(long, env = "POD_IDENTITY_SHUTDOWN_TIMEOUT", default_value_t = 25.0)]
    pub(crate) shutdown_timeout: f64,
    /// Connections open at once per listener; more are closed as they arrive.
    #[arg(long, env = "POD_IDENTITY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub(crate) max_connections: usize,
    /// Connections open at once per listener from one client address; more from it are
    /// closed as they arrive while others are still served (default: the program's: 256 for
    /// the webhook, 64 for the exchange and the agent; never above --max-connections).
    #[arg(long, env = "POD_IDENTITY_MAX_CONNECTIONS_PER_CLIENT")]
    pub(crate) max_connections_per_client: Option<usize>,
}

impl LimitArgs {
    /// These bounds over `base` (which holds the program's body limit and budget).
    pub(crate) fn limits(&self, base: Limits) -> Result<Limits, ArgError> {
        let header_read = seconds("header-read-timeout", self.header_read_timeout)?;
        if self.max_connections == 0 {
            return Err(ArgError("--max-connections must be at least 1".into()));
        }
        if self.max_connections_per_client == Some(0) {
            return Err(ArgError("--max-connections-per-client must be at least 1".into()));
        }
        let per_client = self
            .max_connections_per_client
            .unwrap_or(base.max_connections_per_client)
            .min(self.max_connections);
        Ok(Limits {
            handshake: header_read,
            max_connections_per_client: per_client,
            header_read,
            request: seconds("request-timeout", self.request_timeout)?,
            idle: seconds("idle-timeout", self.idle_timeout)?,
            shutdown: seconds("shutdown-timeout", self.shutdown_timeout)?,
            max_connections: self.max_connections,
            ..base
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn the_per_client_share_is_the_programs_unless_set_and_never_above_the_cap() {
        let base = Limits {
            max_connections_per_client: 32,
            ..Limits::default()
        };
        let limits = |args: &[&str]| {
            let argv = ["program"].iter().chain(args);
            Flags::try_parse_from(argv).unwrap().limits.limits(base)
        };
        assert_eq!(limits(&[]).unwrap().max_connections_per_client, 32);
        let set = limits(&["--max-connections-per-client", "8"]).unwrap();
        assert_eq!(set.max_connections_per_client, 8);
        let capped = limits(&["--max-connections", "10", "--max-connections-per-client", "50"]).unwrap();
        assert_eq!(capped.max_connections_per_client, 10);
        let e = limits(&["--max-connections-per-client", "0"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--max-connections-per-client must be at least 1"),
            "{e}"
        );
    }
}
