//! The command line: one subcommand per program or tool. Each program owns its arguments and
//! their checks (`webhook::args`, `agent::args`, `exchange::args`); this only assembles them.

use clap::{Parser, Subcommand, ValueEnum};

use crate::MigrateArgs;
use crate::agent::args::AgentArgs;
use crate::certs;
use crate::exchange::args::ExchangeArgs;
use crate::webhook::args::{ExplainArgs, MutateArgs, ServeArgs};

impl Cli {
    /// Sets up logging to stderr in the chosen format; `RUST_LOG` sets the level.
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        // Colours only for a terminal: escape codes in files and log collectors are noise.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
    }
}

#[derive(Parser)]
#[command(
    name = "pod-identity-webhook",
    version,
    about = "Pod identity for Kubernetes: admission webhook and tools"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "POD_IDENTITY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the mutating admission webhook (HTTPS).
    Serve(ServeArgs),
    /// Apply the mutation to a Pod manifest or AdmissionReview offline and print the result.
    Mutate(MutateArgs),
    /// Explain why a pod (a manifest) has or would get credentials, or not, and what to do.
    /// Exit status: 0 credentials, 1 not injected, 3 created without them (recreate it), 2 error.
    Explain(ExplainArgs),
    /// Generate a CA and a serving certificate for the webhook and print the caBundle.
    Certs(certs::Args),
    /// Print the PodIdentityAssociation CustomResourceDefinitions (YAML): the namespaced one,
    /// and the cluster-scoped one still read for a release.
    Crd,
    /// Convert the cluster-scoped associations (podidentity.io/v1alpha1) into namespaced ones
    /// (iam.podidentity.io/v1beta1), using the kubeconfig or the in-cluster configuration.
    /// Exit status: 0 done (or nothing to do), 1 an association was left with a problem, 2 error.
    MigrateAssociations(MigrateArgs),
    /// Run the node-local credential agent the injected env vars point at (HTTP).
    Agent(AgentArgs),
    /// Run the cluster-side assume-agency-for-pod-identity API (TokenReview + IAM).
    Exchange(ExchangeArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap checks the assembled command (unique names and groups, valid defaults) only when
    /// it is built; this builds every subcommand.
    #[test]
    fn the_assembled_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
