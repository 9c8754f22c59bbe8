//! The command line: one subcommand per program or tool, each with its own arguments, and
//! the checks that turn them into settings. `main` parses; the programs read these.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::association::source::AssociationSource;
use crate::cloud::auth::{CloudAuth, TokenFile};
use crate::cloud::client::{Upstream, http_client};
use crate::cloud::signer::AccessKey;
use crate::http::Limits;
use crate::profile::{Profile, Provider};
use crate::webhook::mutation::{
    DEFAULT_TOKEN_EXPIRATION, Injection, MAX_TOKEN_EXPIRATION, MIN_TOKEN_EXPIRATION, Settings,
};

/// A flag's value is unusable; the message says which flag and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub(crate) String);

/// `s` seconds as a duration, or an error naming `--name`.
pub(crate) fn seconds(name: &str, s: f64) -> Result<Duration, ArgError> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        ArgError(format!(
            "--{name} must be a non-negative number of seconds, got {s}"
        ))
    })
}

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

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum SourceKind {
    File,
    Kubernetes,
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
    Certs(CertsArgs),
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

/// `migrate-associations`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Say what would be done; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Delete each old object once its namespaced twin exists and is equal.
    #[arg(long)]
    pub(crate) delete_old: bool,
}

impl MigrateArgs {
    /// Runs the migration and prints one line per old object and a summary; the exit status.
    pub fn run(&self) -> u8 {
        let m = crate::association::migrate::Migration {
            dry_run: self.dry_run,
            delete_old: self.delete_old,
        };
        let ran = tokio::runtime::Runtime::new()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(crate::association::migrate::run(m))
                    .map_err(|e| e.to_string())
            });
        match ran {
            Ok(report) => {
                for line in &report.lines {
                    println!("{line}");
                }
                println!("{}", report.summary(self.dry_run));
                u8::from(report.problems > 0)
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        }
    }
}

/// Where associations come from, for commands that read them.
#[derive(clap::Args)]
pub struct SourceArgs {
    /// `file` (with --associations) or `kubernetes` (PodIdentityAssociation objects).
    #[arg(long, env = "POD_IDENTITY_SOURCE", value_enum, default_value_t = SourceKind::File)]
    pub(crate) source: SourceKind,
    /// Association file (YAML or JSON), reloaded on change.
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS")]
    pub(crate) associations: Option<PathBuf>,
}

impl SourceArgs {
    /// The association source these flags name; records read from a cluster carry `cluster_id`.
    pub(crate) fn source(&self, cluster_id: Option<String>) -> Result<AssociationSource, ArgError> {
        Ok(match (self.source, &self.associations) {
            (SourceKind::File, Some(path)) => AssociationSource::File(path.clone()),
            (SourceKind::File, None) => AssociationSource::None,
            (SourceKind::Kubernetes, None) => AssociationSource::Kubernetes { cluster_id },
            (SourceKind::Kubernetes, Some(_)) => {
                return Err(ArgError(
                    "--associations is for --source file; drop it or use --source file".into(),
                ));
            }
        })
    }
}

/// Authentication to the cloud APIs: a token file, an access key from files, or (for
/// development) from the environment.
#[derive(clap::Args)]
pub struct CloudAuthArgs {
    /// File holding a token sent as X-Auth-Token (re-read when it changes). Without it,
    /// requests are signed with the access key from --access-key-file/--secret-key-file, else
    /// from HUAWEICLOUD_SDK_AK / HUAWEICLOUD_SDK_SK (and HUAWEICLOUD_SDK_SECURITY_TOKEN for
    /// temporary keys) in the environment.
    #[arg(
        long,
        env = "POD_IDENTITY_AUTH_TOKEN_FILE",
        conflicts_with = "access_key_file"
    )]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// File holding the access key id (AK), e.g. a mounted Secret; re-read when it changes.
    #[arg(long, env = "POD_IDENTITY_ACCESS_KEY_FILE", requires = "secret_key_file")]
    pub(crate) access_key_file: Option<PathBuf>,
    /// File holding the secret access key (SK); re-read when it changes.
    #[arg(long, env = "POD_IDENTITY_SECRET_KEY_FILE", requires = "access_key_file")]
    pub(crate) secret_key_file: Option<PathBuf>,
    /// Extra CA bundle (PEM) to trust for upstream HTTPS, besides the public roots.
    #[arg(long, env = "POD_IDENTITY_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Seconds an upstream call may take, its one retry included (default: the agent 4, the
    /// exchange 2.5, so that the exchange answers within the agent's deadline).
    #[arg(long)]
    pub(crate) upstream_timeout: Option<f64>,
}

impl CloudAuthArgs {
    /// The token file, else the key files, else the access key from the environment.
    pub(crate) fn auth(&self) -> Result<CloudAuth, ArgError> {
        if let Some(path) = &self.auth_token_file {
            return Ok(CloudAuth::TokenFile(TokenFile::new(path.clone())));
        }
        if let (Some(ak), Some(sk)) = (&self.access_key_file, &self.secret_key_file) {
            return Ok(CloudAuth::AkSkFiles {
                ak: TokenFile::holding(ak.clone(), "access key file"),
                sk: TokenFile::holding(sk.clone(), "secret key file"),
            });
        }
        AccessKey::from_env().map(CloudAuth::AkSk).ok_or_else(|| {
            ArgError(
                "set --auth-token-file, or --access-key-file and --secret-key-file, or (for \
                 development) HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK"
                    .into(),
            )
        })
    }

    /// The upstream client; `default_timeout` seconds per call unless the flag says otherwise.
    pub(crate) fn client(&self, default_timeout: f64) -> Result<Upstream, ArgError> {
        let timeout = seconds(
            "upstream-timeout",
            self.upstream_timeout.unwrap_or(default_timeout),
        )?;
        http_client(self.ca_file.as_deref(), timeout).map_err(|e| ArgError(e.to_string()))
    }
}

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
    pub(crate) source: SourceArgs,
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
    pub(crate) auth: CloudAuthArgs,
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
    #[arg(long, env = "POD_IDENTITY_CALLER_AUDIENCE", default_value = crate::exchange::CALLER_AUDIENCE)]
    pub(crate) caller_audience: String,
    /// The only identity allowed to call: the agents' service account.
    #[arg(long, env = "POD_IDENTITY_AGENT_SERVICE_ACCOUNT", default_value = crate::exchange::AGENT)]
    pub(crate) agent_service_account: String,
    /// The agents' DaemonSet, NAMESPACE/NAME: a caller's token must be bound to a running pod
    /// of it on the node the token names (the exchange needs get on pods there). Empty: any
    /// node-bound token of --agent-service-account is taken.
    #[arg(long, env = "POD_IDENTITY_AGENT_DAEMONSET", default_value = crate::exchange::AGENT_DAEMONSET)]
    pub(crate) agent_daemonset: String,
    /// IAM calls per second for one pod service account; beyond it (and the burst), 429.
    #[arg(long, default_value_t = crate::exchange::RATE_PER_SERVICE_ACCOUNT)]
    pub(crate) rate_per_service_account: f64,
    /// IAM calls one pod service account may make in a burst.
    #[arg(long, default_value_t = crate::exchange::BURST_PER_SERVICE_ACCOUNT)]
    pub(crate) burst_per_service_account: f64,
    /// Seconds a caller token's review and the credentials issued for a pod token are
    /// remembered (keyed by the token's SHA-256), at most 300; 0 remembers nothing.
    #[arg(long, default_value_t = crate::exchange::CACHE_TTL)]
    pub(crate) cache_ttl: f64,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    #[command(flatten)]
    pub(crate) auth: CloudAuthArgs,
}

/// What the injection looks like (shared by `serve` and `mutate`).
#[derive(clap::Args)]
pub struct InjectionArgs {
    /// Provider profile: the env var names, audience and paths the SDKs expect.
    #[arg(long, env = "POD_IDENTITY_PROVIDER", value_enum, default_value_t = Provider::Cce)]
    pub(crate) provider: Provider,
    /// Credential endpoint URL put in the pod (default: the profile's link-local endpoint).
    #[arg(long, env = "POD_IDENTITY_CREDENTIALS_URI")]
    pub(crate) credentials_uri: Option<String>,
    /// Default lifetime of the projected token in seconds, 600 (10 minutes) to 172800 (48
    /// hours); spread per pod over its last twelfth.
    #[arg(long, env = "POD_IDENTITY_TOKEN_EXPIRATION", default_value_t = DEFAULT_TOKEN_EXPIRATION)]
    pub(crate) token_expiration: i64,
    /// Region injected as AWS_REGION and AWS_DEFAULT_REGION, with
    /// AWS_STS_REGIONAL_ENDPOINTS=regional (eks profile).
    #[arg(long, env = "POD_IDENTITY_AWS_REGION")]
    pub(crate) aws_region: Option<String>,
}

impl InjectionArgs {
    /// The injection these flags describe; refuses an endpoint the pods' SDKs would refuse.
    pub(crate) fn injection(&self) -> Result<Injection, ArgError> {
        let profile = self.provider.profile();
        if !(MIN_TOKEN_EXPIRATION..=MAX_TOKEN_EXPIRATION).contains(&self.token_expiration) {
            return Err(ArgError(format!(
                "--token-expiration {} must be between {MIN_TOKEN_EXPIRATION} (10 minutes, the API server's shortest) and {MAX_TOKEN_EXPIRATION} (48 hours) seconds",
                self.token_expiration
            )));
        }
        let mut settings = Settings::new(profile, self.credentials_uri.clone(), self.token_expiration);
        check_credentials_uri(profile, &settings.credentials_uri)?;
        if let Some(region) = &self.aws_region {
            if profile.region_envs.is_empty() {
                return Err(ArgError(format!(
                    "--aws-region is for --provider eks; the {} profile injects no region",
                    self.provider
                )));
            }
            if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(ArgError(format!(
                    "--aws-region {region:?} is not a region name (e.g. eu-west-1)"
                )));
            }
            settings.region = Some(region.clone());
        }
        Ok(Injection::new(profile, settings))
    }
}

/// `--credentials-uri` must be an http(s) URL with a host that the profile's SDKs will call.
fn check_credentials_uri(profile: &Profile, uri: &str) -> Result<(), ArgError> {
    let bad = |why: String| ArgError(format!("--credentials-uri {uri:?}: {why}"));
    let url = url::Url::parse(uri).map_err(|e| bad(format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("must be an http:// or https:// URL with a host".into()));
    }
    match profile.refuses_endpoint(&url) {
        Some(why) => Err(bad(why)),
        None => Ok(()),
    }
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "POD_IDENTITY_LISTEN", default_value = "127.0.0.1:8443")]
    pub(crate) listen: SocketAddr,
    /// Directory with tls.crt and tls.key (reloaded on change); a localhost CA and
    /// certificate are generated there when both are absent.
    #[arg(long, env = "POD_IDENTITY_CERT_DIR", default_value = "certs")]
    pub(crate) cert_dir: PathBuf,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Cluster id reported in association records read from the cluster.
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ID")]
    pub(crate) cluster_id: Option<String>,
    #[command(flatten)]
    pub(crate) injection: InjectionArgs,
    /// Seconds between checks of the certificate and association files.
    #[arg(long, env = "POD_IDENTITY_RELOAD_INTERVAL", default_value_t = 2.0)]
    pub(crate) reload_interval: f64,
    #[command(flatten)]
    pub(crate) report: ReportArgs,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// The missed-injection report (with `--source kubernetes`).
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Report pods in selected namespaces whose service account has an association but that
    /// were not injected: a Kubernetes Event on each and `podidentity_missed_injections`. One
    /// replica reports at a time (a Lease). Needs get/list/watch on pods, get on namespaces,
    /// create on events.k8s.io events and the Lease.
    #[arg(long, env = "POD_IDENTITY_REPORT_MISSED", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) report_missed: bool,
    /// Namespace of the report's Lease (the webhook's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "pod-identity-system")]
    pub(crate) lease_namespace: String,
    /// This replica's name in the Lease (default: the pod's name from POD_NAME, else the host
    /// name and process id).
    #[arg(long, env = "POD_NAME")]
    pub(crate) lease_identity: Option<String>,
    /// Seconds the report's Lease holds without renewal: how long the report may pause when
    /// the replica holding it stops or dies (the others look again when it would end).
    #[arg(long, env = "POD_IDENTITY_REPORT_LEASE_SECONDS", default_value_t = 15)]
    pub(crate) report_lease_seconds: u64,
}

/// The bounds of a program's listeners (see `http::Limits`); each program sets its own body
/// limit and budget.
#[derive(clap::Args)]
pub struct LimitArgs {
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

#[derive(clap::Args)]
pub struct MutateArgs {
    /// Association file (YAML or JSON).
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS")]
    pub(crate) associations: PathBuf,
    /// Namespace of the pod (default: the review's, else the manifest's, else `default`).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    #[command(flatten)]
    pub(crate) injection: InjectionArgs,
    /// Print the JSON Patch instead of the mutated pod.
    #[arg(long)]
    pub(crate) patch: bool,
    /// Pod manifest or AdmissionReview (YAML or JSON); `-` reads standard input.
    pub(crate) input: PathBuf,
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Association file (YAML or JSON); for a live pod, default: the cluster's
    /// PodIdentityAssociations.
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS")]
    pub(crate) associations: Option<PathBuf>,
    /// Namespace of the pod (default: the manifest's, else `default`).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// A label of the pod's namespace, KEY=VALUE; repeat for each (default: from a Namespace
    /// document in the input).
    #[arg(long = "namespace-label")]
    pub(crate) namespace_labels: Vec<String>,
    #[command(flatten)]
    pub(crate) injection: InjectionArgs,
    /// Pod manifest (e.g. `kubectl get pod -o yaml`), optionally with its Namespace and a
    /// MutatingWebhookConfiguration (else the shipped one); `-` reads standard input; or
    /// NAMESPACE/NAME of a live pod, read with the kubeconfig.
    pub(crate) input: PathBuf,
}

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long, default_value = "certs")]
    pub(crate) out: PathBuf,
    /// DNS names of the serving certificate (default: the in-cluster Service names).
    #[arg(long = "dns")]
    pub(crate) dns: Vec<String>,
    /// IP addresses of the serving certificate.
    #[arg(long = "ip")]
    pub(crate) ip: Vec<IpAddr>,
    /// Validity in days (at least 1).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) days: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(args: &[&str]) -> AgentArgs {
        let argv = ["pod-identity-webhook", "agent", "--backend", "local"]
            .iter()
            .chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Agent(a) => a,
            _ => unreachable!("parsed as the agent"),
        }
    }

    #[test]
    fn the_per_client_share_is_the_programs_unless_set_and_never_above_the_cap() {
        let base = Limits {
            max_connections_per_client: 32,
            ..Limits::default()
        };
        let limits = |args: &[&str]| agent(args).limits.limits(base);
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

    #[test]
    fn injection_flags_are_checked() {
        let injection = |provider, uri: Option<&str>, region: Option<&str>| {
            InjectionArgs {
                provider,
                credentials_uri: uri.map(str::to_owned),
                token_expiration: DEFAULT_TOKEN_EXPIRATION,
                aws_region: region.map(str::to_owned),
            }
            .injection()
        };
        let eks = injection(Provider::Eks, None, Some("eu-west-1")).unwrap();
        assert_eq!(eks.settings.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            eks.settings.credentials_uri,
            "http://169.254.170.23/v1/credentials"
        );
        for (provider, uri, region, needle) in [
            (Provider::Cce, Some("notaurl"), None, "not a URL"),
            (
                Provider::Cce,
                Some("unix:/run/agent.sock"),
                None,
                "http:// or https://",
            ),
            (Provider::Eks, Some("http://10.0.0.1/c"), None, "plain-http"),
            (
                Provider::Cce,
                None,
                Some("eu-west-1"),
                "--aws-region is for --provider eks",
            ),
            (Provider::Eks, None, Some("eu_west 1"), "not a region name"),
        ] {
            let e = injection(provider, uri, region).err().unwrap().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
