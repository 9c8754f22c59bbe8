//! The agent's flags and their checks into what it runs with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;

use super::backend::{self, Backend, CceBackend, EksBackend};
use super::cache::CacheConfig;
use super::config::AgentConfig;
use crate::args::{ArgError, seconds};
use crate::association::source::{self, AssociationSource};
use crate::cloud::auth::{self, CloudAuth, TokenFile};
use crate::error::StartError;
use crate::http::LimitArgs;
use crate::profile::Provider;

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum BackendKind {
    /// DEVELOPMENT ONLY: mints fake credentials and trusts the token's claims without
    /// verifying its signature.
    Local,
    /// The cloud's assume-agency-for-pod-identity API (or `exchange`).
    Cce,
    /// EKS Auth's assume-role-for-pod-identity (or `exchange --cluster-name`).
    Eks,
}

#[derive(clap::Args)]
#[command(
    after_help = "WARNING: --backend local is for development only: it reads the service account from the \
token's claims WITHOUT verifying the signature and hands out fake credentials."
)]
pub struct AgentArgs {
    /// Credential endpoint address; repeat (or separate with commas) for several, e.g.
    /// 169.254.170.23:80 and [fd00:ec2::23]:80 on a node.
    #[arg(
        long,
        env = "POD_IDENTITY_AGENT_LISTEN",
        default_value = "127.0.0.1:2703",
        value_delimiter = ','
    )]
    pub(crate) listen: Vec<SocketAddr>,
    /// A credential endpoint address to answer on when the host has it (e.g.
    /// `[fd00:ec2::23]:80` on nodes with IPv6), skipped with a warning when it has not;
    /// repeatable.
    #[arg(long, env = "POD_IDENTITY_AGENT_LISTEN_IF_PRESENT", value_delimiter = ',')]
    pub(crate) listen_if_present: Vec<SocketAddr>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "POD_IDENTITY_AGENT_ADMIN_LISTEN",
        default_value = "127.0.0.1:2704"
    )]
    pub(crate) admin_listen: SocketAddr,
    /// Response shape: the SDKs of this provider.
    #[arg(long, env = "POD_IDENTITY_PROVIDER", value_enum, default_value_t = Provider::Cce)]
    pub(crate) provider: Provider,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    /// Where credentials come from.
    #[arg(long, env = "POD_IDENTITY_BACKEND", value_enum)]
    pub(crate) backend: BackendKind,
    /// Where associations come from: with one, cached credentials follow them (an
    /// association deleted or pointed elsewhere drops what was issued under it at once).
    #[command(flatten)]
    pub(crate) source: source::Args,
    /// This agent's node (from the downward API, spec.nodeName): its pods are watched and the
    /// credentials of those that are gone are dropped and not refreshed (needs list and watch
    /// on pods).
    #[arg(long, env = "POD_IDENTITY_NODE_NAME")]
    pub(crate) node_name: Option<String>,
    /// Check every token against the cluster's service-account signing keys (read from the
    /// API server's /openid/v1/jwks, with the cluster configuration the pod watch or the
    /// association source uses) before anything else: forged tokens are refused at once and
    /// spend no upstream budget. `false`: the upstream alone judges tokens.
    #[arg(long, env = "POD_IDENTITY_VERIFY_TOKENS", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) verify_tokens: bool,
    /// Base URL of the assume-agency API (the cloud's CCE endpoint, or `exchange`).
    #[arg(long, env = "POD_IDENTITY_CCE_ENDPOINT")]
    pub(crate) cce_endpoint: Option<String>,
    #[arg(long, env = "POD_IDENTITY_PROJECT_ID")]
    pub(crate) project_id: Option<String>,
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ID")]
    pub(crate) cluster_id: Option<String>,
    /// `eks`: base URL of EKS Auth (default: https://eks-auth.REGION.api.aws; signed with the
    /// node's AWS credentials from the standard chain), or of `exchange` (then with
    /// --auth-token-file, the agent's token, in place of SigV4).
    #[arg(long, env = "POD_IDENTITY_EKS_ENDPOINT")]
    pub(crate) eks_endpoint: Option<String>,
    /// `eks`: the EKS cluster name in the request path.
    #[arg(long, env = "POD_IDENTITY_CLUSTER_NAME")]
    pub(crate) cluster_name: Option<String>,
    /// `eks`: the AWS region (of the default endpoint and of the SigV4 signature).
    #[arg(long, env = "AWS_REGION")]
    pub(crate) region: Option<String>,
    #[command(flatten)]
    pub(crate) auth: auth::Args,
    /// Another Host header value to answer to (besides the link-local addresses, localhost
    /// and the listen address).
    #[arg(long = "allowed-host")]
    pub(crate) allowed_hosts: Vec<String>,
    /// Most tokens with cached credentials.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) cache_size: usize,
    /// Upstream calls per second for cache misses, all pods of the node together; beyond it, 429.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) upstream_rate: f64,
    /// Cache-miss calls allowed in a burst, all pods together.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) upstream_burst: f64,
    /// Cache-miss calls per second for one pod (one source address); beyond it, 429.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) client_rate: f64,
    /// Cache-miss calls in a burst for one pod.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) client_burst: f64,
    /// Refreshes of cached credentials per second: a budget of their own, so misses never
    /// starve them.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) refresh_rate: f64,
    /// Refreshes in a burst.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) refresh_burst: f64,
    /// Seconds a token the upstream refused is answered from memory, without a new call.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) negative_ttl: f64,
    /// Seconds before expiry to refresh cached credentials (at most half their lifetime).
    #[arg(long, default_value_t = 300.0)]
    pub(crate) refresh_before: f64,
    /// Lifetime in seconds of the local backend's fake credentials.
    #[arg(long, default_value_t = 3600.0)]
    pub(crate) local_lifetime: f64,
}

/// Where the agent's credentials come from, built from its flags.
pub(crate) enum BackendChoice {
    /// The development backend: it answers from the associations, so it is built once they
    /// are followed.
    Local {
        lifetime: Duration,
    },
    Upstream(Arc<dyn Backend>),
}

/// What `agent` runs with: every flag checked before anything is contacted.
pub(crate) struct Config {
    pub(crate) agent: AgentConfig,
    pub(crate) backend: BackendChoice,
    pub(crate) source: AssociationSource,
    /// The node whose pods are followed.
    pub(crate) node_name: Option<String>,
    pub(crate) verify_tokens: bool,
}

impl TryFrom<AgentArgs> for Config {
    type Error = StartError;

    fn try_from(args: AgentArgs) -> Result<Self, StartError> {
        let mut agent = AgentConfig::new(args.listen, args.admin_listen, args.provider);
        agent.listen_if_present = args.listen_if_present;
        agent.allowed_hosts.extend(args.allowed_hosts);
        agent.limits = args.limits.limits(agent.limits)?;
        agent.cache = CacheConfig {
            capacity: args.cache_size,
            upstream_rate: args.upstream_rate,
            upstream_burst: args.upstream_burst,
            client_rate: args.client_rate,
            client_burst: args.client_burst,
            refresh_rate: args.refresh_rate,
            refresh_burst: args.refresh_burst,
            negative_ttl: seconds("negative-ttl", args.negative_ttl)?,
            refresh_before: seconds("refresh-before", args.refresh_before)?,
            ..CacheConfig::default()
        };
        // Every backend's cached credentials follow the associations when a source is named;
        // the local backend also reads its answers from them.
        let source = args.source.source(args.cluster_id.clone())?;
        let backend = match args.backend {
            BackendKind::Local => BackendChoice::Local {
                lifetime: seconds("local-lifetime", args.local_lifetime)?,
            },
            BackendKind::Cce => {
                let need = |v: Option<String>, flag: &str| {
                    v.ok_or_else(|| ArgError(format!("--backend cce needs {flag}")))
                };
                let endpoint = need(args.cce_endpoint, "--cce-endpoint")?;
                let project = need(args.project_id, "--project-id")?;
                let cluster = need(args.cluster_id, "--cluster-id")?;
                BackendChoice::Upstream(Arc::new(CceBackend::new(
                    args.auth.client(4.0)?,
                    &endpoint,
                    &project,
                    &cluster,
                    args.auth.auth()?,
                )?))
            }
            BackendKind::Eks => {
                let need = |v: Option<String>, flag: &str| {
                    v.ok_or_else(|| ArgError(format!("--backend eks needs {flag}")))
                };
                let cluster = need(args.cluster_name, "--cluster-name")?;
                let region = need(args.region, "--region (or AWS_REGION)")?;
                let endpoint = args
                    .eks_endpoint
                    .unwrap_or_else(|| backend::regional_endpoint(&region));
                let token = args
                    .auth
                    .auth_token_file
                    .clone()
                    .map(|path| CloudAuth::TokenFile(TokenFile::new(path)));
                BackendChoice::Upstream(Arc::new(EksBackend::new(
                    args.auth.client(4.0)?,
                    &endpoint,
                    &cluster,
                    &region,
                    token,
                )?))
            }
        };
        Ok(Config {
            agent,
            backend,
            source,
            node_name: args.node_name,
            verify_tokens: args.verify_tokens,
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
        agent: AgentArgs,
    }

    fn agent(args: &[&str]) -> AgentArgs {
        let argv = ["agent", "--backend", "local"].iter().chain(args);
        Flags::try_parse_from(argv).unwrap().agent
    }

    #[test]
    fn the_agent_listens_on_one_address_by_default_and_on_several_when_asked() {
        assert_eq!(
            agent(&[]).listen,
            ["127.0.0.1:2703".parse::<SocketAddr>().unwrap()]
        );
        let both = agent(&["--listen", "169.254.170.23:80", "--listen", "[fd00:ec2::23]:80"]).listen;
        assert_eq!(
            both,
            [
                "169.254.170.23:80".parse::<SocketAddr>().unwrap(),
                "[fd00:ec2::23]:80".parse().unwrap()
            ]
        );
        // One value with commas, as the environment variable carries them.
        assert_eq!(
            agent(&["--listen", "169.254.170.23:80,[fd00:ec2::23]:80"]).listen,
            both
        );
    }
}
