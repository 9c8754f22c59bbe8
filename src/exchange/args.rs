//! The exchange's flags and their checks into what it runs with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::config::{self, ExchangeConfig, default_limits};
use super::eks::Eks;
use super::iam::{Domain, Iam};
use super::sts::{self, Sts};
use crate::args::{ArgError, seconds};
use crate::association::source::{self, AssociationSource};
use crate::cloud::auth;
use crate::error::StartError;
use crate::http::LimitArgs;

#[derive(clap::Args)]
pub struct ExchangeArgs {
    #[arg(long, env = "POD_IDENTITY_EXCHANGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Directory with tls.crt and tls.key to serve HTTPS (reloaded on change); plain HTTP
    /// without it.
    #[arg(long, env = "POD_IDENTITY_CERT_DIR")]
    pub(crate) cert_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    /// The project id in the CCE assume-agency-for-pod-identity API path this exchange answers
    /// for (that API is served when it, --cluster-id, --iam-endpoint and --domain-id or --domain-name are given).
    #[arg(long, env = "POD_IDENTITY_PROJECT_ID")]
    pub(crate) project_id: Option<String>,
    /// The cluster id in the CCE assume-agency-for-pod-identity API path (and in IAM session names).
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ID")]
    pub(crate) cluster_id: Option<String>,
    /// IAM endpoint, e.g. https://iam.myhuaweicloud.com
    #[arg(long, env = "POD_IDENTITY_IAM_ENDPOINT")]
    pub(crate) iam_endpoint: Option<String>,
    /// The delegating account's id (preferred) ...
    #[arg(long, env = "POD_IDENTITY_DOMAIN_ID", conflicts_with = "domain_name")]
    pub(crate) domain_id: Option<String>,
    /// ... or name.
    #[arg(long, env = "POD_IDENTITY_DOMAIN_NAME")]
    pub(crate) domain_name: Option<String>,
    /// The EKS cluster name: serves EKS Auth's assume-role-for-pod-identity for it,
    /// assuming roles through STS with the AWS credentials of the standard chain (environment,
    /// shared config and credentials files, web identity, container endpoint, IMDSv2).
    #[arg(long, env = "POD_IDENTITY_CLUSTER_NAME")]
    pub(crate) cluster_name: Option<String>,
    /// The `eks-cluster-arn` session tag (default: arn:aws:eks:REGION:ROLE-ACCOUNT:cluster/NAME).
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ARN", requires = "cluster_name")]
    pub(crate) cluster_arn: Option<String>,
    /// The AWS region of STS and of the ARNs.
    #[arg(long, env = "AWS_REGION", requires = "cluster_name")]
    pub(crate) region: Option<String>,
    /// STS endpoint (default: the regional one, https://sts.REGION.amazonaws.com).
    #[arg(long, env = "POD_IDENTITY_STS_ENDPOINT", requires = "cluster_name")]
    pub(crate) sts_endpoint: Option<String>,
    /// Seconds a TokenReview may take, its one retry included; an API server that does not
    /// answer in time gets the caller a 503 with Retry-After.
    #[arg(long, env = "POD_IDENTITY_REVIEW_TIMEOUT", default_value_t = 1.0)]
    pub(crate) review_timeout: f64,
    /// Check every token against the cluster's service-account signing keys (read from the
    /// API server's /openid/v1/jwks) before its TokenReview: forged tokens are refused at once
    /// and cost no review. `false`: TokenReview alone (e.g. tokens of a second issuer).
    #[arg(long, env = "POD_IDENTITY_VERIFY_TOKENS", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) verify_tokens: bool,
    /// Lifetime of the issued credentials in seconds (900 to 86400).
    #[arg(long, default_value_t = 3600)]
    pub(crate) duration: u32,
    /// The audience the callers' X-Auth-Token is reviewed for (the agents' projected token).
    #[arg(long, env = "POD_IDENTITY_CALLER_AUDIENCE", default_value = config::CALLER_AUDIENCE)]
    pub(crate) caller_audience: String,
    /// The only identity allowed to call: the agents' service account.
    #[arg(long, env = "POD_IDENTITY_AGENT_SERVICE_ACCOUNT", default_value = config::AGENT)]
    pub(crate) agent_service_account: String,
    /// The agents' DaemonSet, NAMESPACE/NAME: a caller's token must be bound to a running pod
    /// of it on the node the token names (the exchange needs get on pods there). Empty: any
    /// node-bound token of --agent-service-account is taken.
    #[arg(long, env = "POD_IDENTITY_AGENT_DAEMONSET", default_value = config::AGENT_DAEMONSET)]
    pub(crate) agent_daemonset: String,
    /// IAM calls per second for one pod service account; beyond it (and the burst), 429.
    #[arg(long, default_value_t = config::RATE_PER_SERVICE_ACCOUNT)]
    pub(crate) rate_per_service_account: f64,
    /// IAM calls one pod service account may make in a burst.
    #[arg(long, default_value_t = config::BURST_PER_SERVICE_ACCOUNT)]
    pub(crate) burst_per_service_account: f64,
    /// Seconds a caller token's review and the credentials issued for a pod token are
    /// remembered (keyed by the token's SHA-256), at most 300; 0 remembers nothing.
    #[arg(long, default_value_t = config::CACHE_TTL)]
    pub(crate) cache_ttl: f64,
    #[command(flatten)]
    pub(crate) source: source::Args,
    #[command(flatten)]
    pub(crate) auth: auth::Args,
}

/// What `exchange` runs with: every flag checked before anything is contacted.
pub(crate) struct Config {
    pub(crate) exchange: ExchangeConfig,
    pub(crate) iam: Option<Iam>,
    pub(crate) eks: Option<Eks>,
    pub(crate) source: AssociationSource,
    /// How long a TokenReview (and a key read) may take.
    pub(crate) review_deadline: Duration,
    pub(crate) verify_tokens: bool,
}

impl TryFrom<ExchangeArgs> for Config {
    type Error = StartError;

    fn try_from(args: ExchangeArgs) -> Result<Self, StartError> {
        let cache_ttl = cache_ttl(args.cache_ttl)?;
        let iam = cce_backend(&args)?;
        let eks = eks_backend(&args)?;
        if iam.is_none() && eks.is_none() {
            return Err(ArgError(
                "set --cluster-name (EKS Auth AssumeRoleForPodIdentity), or --project-id, --cluster-id, \
                 --iam-endpoint and --domain-id (CCE assume-agency-for-pod-identity), or both"
                    .into(),
            )
            .into());
        }
        let source = args.source.source(args.cluster_id.clone())?;
        let exchange = ExchangeConfig {
            cert_dir: args.cert_dir,
            limits: args.limits.limits(default_limits())?,
            caller_audience: args.caller_audience,
            agent: args.agent_service_account,
            rate_per_service_account: args.rate_per_service_account,
            burst_per_service_account: args.burst_per_service_account,
            cache_ttl,
            agent_daemonset: agent_daemonset(&args.agent_daemonset)?,
            ..ExchangeConfig::new(
                args.listen,
                args.project_id.as_deref().unwrap_or_default(),
                args.cluster_id.as_deref().unwrap_or_default(),
            )
        };
        Ok(Config {
            exchange,
            iam,
            eks,
            source,
            review_deadline: seconds("review-timeout", args.review_timeout)?,
            verify_tokens: args.verify_tokens,
        })
    }
}

/// `--cache-ttl` as a duration: at most [`MAX_CACHE_TTL`], so an answer given again from the
/// cache still leaves the agent its margin to refresh before the credentials expire (they
/// live at least 900 s).
fn cache_ttl(s: f64) -> Result<Duration, ArgError> {
    let ttl = seconds("cache-ttl", s)?;
    if ttl > MAX_CACHE_TTL {
        return Err(ArgError(format!(
            "--cache-ttl must be at most {} s, got {s}",
            MAX_CACHE_TTL.as_secs()
        )));
    }
    Ok(ttl)
}

const MAX_CACHE_TTL: Duration = Duration::from_secs(300);

/// `--agent-daemonset NAMESPACE/NAME`, or empty for none.
fn agent_daemonset(s: &str) -> Result<Option<(String, String)>, ArgError> {
    if s.is_empty() {
        return Ok(None);
    }
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(Some((ns.to_owned(), name.to_owned())))
        }
        _ => Err(ArgError(format!(
            "--agent-daemonset {s:?} must be NAMESPACE/NAME (or empty to accept any node-bound token of --agent-service-account)"
        ))),
    }
}

/// The IAM upstream of the CCE assume-agency API when any of its flags is given (then all
/// are needed).
fn cce_backend(args: &ExchangeArgs) -> Result<Option<Iam>, StartError> {
    let (project, cluster, endpoint) = (&args.project_id, &args.cluster_id, &args.iam_endpoint);
    let domain = match (&args.domain_id, &args.domain_name) {
        (Some(id), _) => Some(Domain::Id(id.clone())),
        (None, Some(name)) => Some(Domain::Name(name.clone())),
        (None, None) => None,
    };
    let (Some(_), Some(_), Some(endpoint), Some(domain)) = (project, cluster, endpoint, domain) else {
        if project.is_some()
            || cluster.is_some()
            || endpoint.is_some()
            || args.domain_id.is_some()
            || args.domain_name.is_some()
        {
            return Err(ArgError(
                "the CCE assume-agency-for-pod-identity API needs all of --project-id, --cluster-id, --iam-endpoint \
                 and --domain-id or --domain-name"
                    .into(),
            )
            .into());
        }
        return Ok(None);
    };
    let client = args.auth.client(2.5)?;
    Ok(Some(Iam::new(
        client,
        endpoint,
        args.auth.auth()?,
        domain,
        args.duration,
    )?))
}

/// EKS Auth's settings when `--cluster-name` is given.
fn eks_backend(args: &ExchangeArgs) -> Result<Option<Eks>, StartError> {
    let Some(cluster_name) = &args.cluster_name else {
        return Ok(None);
    };
    let region = args
        .region
        .clone()
        .ok_or_else(|| ArgError("--cluster-name needs --region (or AWS_REGION)".into()))?;
    let endpoint = args
        .sts_endpoint
        .clone()
        .unwrap_or_else(|| sts::regional_endpoint(&region));
    let sts = Sts::new(args.auth.client(2.5)?, &endpoint, &region, args.duration)?;
    Ok(Some(Eks {
        cluster_name: cluster_name.clone(),
        cluster_arn: args.cluster_arn.clone(),
        region,
        sts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_ttl_leaves_the_agent_its_refresh_margin() {
        assert_eq!(cache_ttl(0.0).unwrap(), Duration::ZERO);
        assert_eq!(cache_ttl(300.0).unwrap(), MAX_CACHE_TTL);
        let e = cache_ttl(301.0).unwrap_err().to_string();
        assert!(e.contains("--cache-ttl must be at most 300 s"), "{e}");
        assert!(cache_ttl(-1.0).is_err());
    }
}
