//! How the agent is set up, and its defaults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::cache::CacheConfig;
use super::pods::NodePods;
use crate::http::Limits;
use crate::issuer::IssuerKeys;
use crate::profile::Provider;

/// The link-local address the injected endpoint uses, in both address families.
pub const LINK_LOCAL_HOSTS: [&str; 2] = ["169.254.170.23", "fd00:ec2::23"];

/// The agent's listener bounds: requests carry no body worth the name (`{}` at most).
fn default_limits() -> Limits {
    Limits {
        max_body: 16 * 1024,
        body_budget: 4 * 1024 * 1024,
        max_connections_per_client: 64,
        ..Limits::default()
    }
}

/// How the agent is set up.
pub struct AgentConfig {
    /// The credential endpoint's addresses (e.g. 169.254.170.23:80 and [fd00:ec2::23]:80).
    pub listen: Vec<SocketAddr>,
    /// Addresses answered on when the host has them, skipped with a warning when not.
    pub listen_if_present: Vec<SocketAddr>,
    pub admin_listen: SocketAddr,
    pub provider: Provider,
    /// Host header values (without port) the credential endpoint answers to besides its own
    /// addresses ([`AgentConfig::hosts`]).
    pub allowed_hosts: Vec<String>,
    pub cache: CacheConfig,
    /// How often the background refresher looks for credentials due for refresh.
    pub refresh_interval: Duration,
    pub limits: Limits,
    /// The node whose pods are followed, so credentials of pods that are gone are dropped.
    pub pods: Option<NodePods>,
    /// The cluster's signing keys: tokens that do not verify against them are refused before
    /// they can spend an upstream budget.
    pub issuer: Option<Arc<IssuerKeys>>,
}

impl AgentConfig {
    pub fn new(listen: Vec<SocketAddr>, admin_listen: SocketAddr, provider: Provider) -> Self {
        AgentConfig {
            listen,
            listen_if_present: Vec::new(),
            admin_listen,
            provider,
            allowed_hosts: Vec::new(),
            cache: CacheConfig::default(),
            refresh_interval: Duration::from_secs(1),
            limits: default_limits(),
            pods: None,
            issuer: None,
        }
    }
}

impl AgentConfig {
    /// Every Host the credential endpoint answers to: the link-local addresses, localhost,
    /// each listen address and the extra `allowed_hosts`.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = LINK_LOCAL_HOSTS.iter().map(|h| h.to_string()).collect();
        let own = self
            .listen
            .iter()
            .chain(&self.listen_if_present)
            .map(|a| a.ip().to_string());
        for host in ["localhost".to_owned(), "127.0.0.1".to_owned()]
            .into_iter()
            .chain(own)
            .chain(self.allowed_hosts.iter().cloned())
        {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_answers_to_each_of_its_addresses() {
        let listen = vec![
            "169.254.170.23:80".parse().unwrap(),
            "[fd00:ec2::23]:80".parse().unwrap(),
            "[::1]:0".parse().unwrap(),
        ];
        let mut config = AgentConfig::new(listen, "127.0.0.1:0".parse().unwrap(), Provider::Cce);
        config.allowed_hosts.push("agent.local".into());
        let hosts = config.hosts();
        for h in [
            "169.254.170.23",
            "fd00:ec2::23",
            "::1",
            "localhost",
            "127.0.0.1",
            "agent.local",
        ] {
            assert_eq!(hosts.iter().filter(|x| *x == h).count(), 1, "{h} in {hosts:?}");
        }
    }
}
