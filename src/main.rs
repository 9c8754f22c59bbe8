//! Command line: one subcommand per job, each with its own argument struct.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use pod_identity_webhook::agent::backend::{self, CceAuth, CceBackend, LocalBackend, TokenFile};
use pod_identity_webhook::agent::cache::CacheConfig;
use pod_identity_webhook::agent::{Agent, AgentConfig};
use pod_identity_webhook::association::{Index, file};
use pod_identity_webhook::association::{Store, source};
use pod_identity_webhook::exchange::iam::{Domain, Iam};
use pod_identity_webhook::exchange::{Exchange, ExchangeConfig, KubeReviewer};
use pod_identity_webhook::metrics::Metrics;
use pod_identity_webhook::mutation::{
    DEFAULT_TOKEN_EXPIRATION, Injection, MIN_TOKEN_EXPIRATION, Provider, Settings,
};
use pod_identity_webhook::server::{AssociationSource, ServeConfig, Server};
use pod_identity_webhook::signer::AccessKey;
use pod_identity_webhook::{certs, offline};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(Parser)]
#[command(
    name = "pod-identity-webhook",
    version,
    about = "Pod identity for Kubernetes: admission webhook and tools"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "POD_IDENTITY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum SourceKind {
    File,
    Kubernetes,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mutating admission webhook (HTTPS).
    Serve(ServeArgs),
    /// Apply the mutation to a Pod manifest or AdmissionReview offline and print the result.
    Mutate(MutateArgs),
    /// Generate a CA and a serving certificate for the webhook and print the caBundle.
    Certs(CertsArgs),
    /// Print the PodIdentityAssociation CustomResourceDefinition (YAML).
    Crd,
    /// Run the node-local credential agent the injected env vars point at (HTTP).
    Agent(AgentArgs),
    /// Run the cluster-side assume-agency-for-pod-identity API (TokenReview + IAM).
    Exchange(ExchangeArgs),
}

/// Where associations come from, for commands that read them.
#[derive(clap::Args)]
struct SourceArgs {
    /// `file` (with --associations) or `kubernetes` (PodIdentityAssociation objects).
    #[arg(long, env = "POD_IDENTITY_SOURCE", value_enum, default_value_t = SourceKind::File)]
    source: SourceKind,
    /// Association file (YAML or JSON), reloaded on change.
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS")]
    associations: Option<PathBuf>,
}

impl SourceArgs {
    async fn resolve(self, cluster_id: Option<String>) -> Result<AssociationSource> {
        Ok(match (self.source, self.associations) {
            (SourceKind::File, Some(path)) => AssociationSource::File(path),
            (SourceKind::File, None) => AssociationSource::None,
            (SourceKind::Kubernetes, None) => AssociationSource::Kubernetes {
                client: kube_client().await?,
                cluster_id,
            },
            (SourceKind::Kubernetes, Some(_)) => {
                return Err("--associations is for --source file; drop it or use --source file".into());
            }
        })
    }
}

async fn kube_client() -> Result<kube::Client> {
    kube::Client::try_default()
        .await
        .map_err(|e| format!("no usable cluster configuration (in-cluster or KUBECONFIG): {e}").into())
}

/// Authentication to the cloud APIs: a token file, or AK/SK from the environment.
#[derive(clap::Args)]
struct CloudAuthArgs {
    /// File holding an IAM token sent as X-Auth-Token (re-read when it changes). Without it,
    /// requests are signed with HUAWEICLOUD_SDK_AK / HUAWEICLOUD_SDK_SK (and
    /// HUAWEICLOUD_SDK_SECURITY_TOKEN for temporary keys) from the environment.
    #[arg(long, env = "POD_IDENTITY_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Extra CA bundle (PEM) to trust for upstream HTTPS, besides the public roots.
    #[arg(long, env = "POD_IDENTITY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Seconds an upstream call may take.
    #[arg(long, default_value_t = 4.0)]
    upstream_timeout: f64,
}

impl CloudAuthArgs {
    fn auth(&self) -> Result<CceAuth> {
        match (&self.auth_token_file, AccessKey::from_env()) {
            (Some(path), _) => Ok(CceAuth::TokenFile(TokenFile::new(path.clone()))),
            (None, Some(key)) => Ok(CceAuth::AkSk(key)),
            (None, None) => Err("set --auth-token-file, or HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK".into()),
        }
    }

    fn client(&self) -> Result<reqwest::Client> {
        Ok(backend::http_client(
            self.ca_file.as_deref(),
            seconds("upstream-timeout", self.upstream_timeout)?,
        )?)
    }
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum BackendKind {
    /// DEVELOPMENT ONLY: mints fake credentials and trusts the token's claims without
    /// verifying its signature.
    Local,
    /// The cloud's assume-agency-for-pod-identity API (or `exchange`).
    Cce,
}

#[derive(clap::Args)]
#[command(
    after_help = "WARNING: --backend local is for development only: it reads the service account from the \
token's claims WITHOUT verifying the signature and hands out fake credentials."
)]
struct AgentArgs {
    /// Credential endpoint address (169.254.170.23:80 on a node).
    #[arg(long, env = "POD_IDENTITY_AGENT_LISTEN", default_value = "127.0.0.1:2703")]
    listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "POD_IDENTITY_AGENT_ADMIN_LISTEN",
        default_value = "127.0.0.1:2704"
    )]
    admin_listen: SocketAddr,
    /// Response shape: the SDKs of this provider.
    #[arg(long, env = "POD_IDENTITY_PROVIDER", value_enum, default_value_t = Provider::Cce)]
    provider: Provider,
    /// Where credentials come from.
    #[arg(long, env = "POD_IDENTITY_BACKEND", value_enum)]
    backend: BackendKind,
    #[command(flatten)]
    source: SourceArgs,
    /// Base URL of the assume-agency API (the cloud's CCE endpoint, or `exchange`).
    #[arg(long, env = "POD_IDENTITY_CCE_ENDPOINT")]
    cce_endpoint: Option<String>,
    #[arg(long, env = "POD_IDENTITY_PROJECT_ID")]
    project_id: Option<String>,
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ID")]
    cluster_id: Option<String>,
    #[command(flatten)]
    auth: CloudAuthArgs,
    /// Another Host header value to answer to (besides the link-local addresses, localhost
    /// and the listen address).
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// Most tokens with cached credentials.
    #[arg(long, default_value_t = 10_000)]
    cache_size: usize,
    /// Upstream calls per second (misses and refreshes); beyond it, 429.
    #[arg(long, default_value_t = 50.0)]
    upstream_rate: f64,
    /// Upstream calls allowed in a burst.
    #[arg(long, default_value_t = 100.0)]
    upstream_burst: f64,
    /// Seconds before expiry to refresh cached credentials (at most half their lifetime).
    #[arg(long, default_value_t = 300.0)]
    refresh_before: f64,
    /// Lifetime in seconds of the local backend's fake credentials.
    #[arg(long, default_value_t = 3600.0)]
    local_lifetime: f64,
}

#[derive(clap::Args)]
struct ExchangeArgs {
    #[arg(long, env = "POD_IDENTITY_EXCHANGE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory with tls.crt and tls.key to serve HTTPS (reloaded on change); plain HTTP
    /// without it.
    #[arg(long, env = "POD_IDENTITY_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// The project id in the API path this exchange answers for.
    #[arg(long, env = "POD_IDENTITY_PROJECT_ID")]
    project_id: String,
    /// The cluster id in the API path (and in IAM session names).
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ID")]
    cluster_id: String,
    /// IAM endpoint, e.g. https://iam.myhuaweicloud.com
    #[arg(long, env = "POD_IDENTITY_IAM_ENDPOINT")]
    iam_endpoint: String,
    /// The delegating account's id (preferred) ...
    #[arg(
        long,
        env = "POD_IDENTITY_DOMAIN_ID",
        conflicts_with = "domain_name",
        required_unless_present = "domain_name"
    )]
    domain_id: Option<String>,
    /// ... or name.
    #[arg(long, env = "POD_IDENTITY_DOMAIN_NAME")]
    domain_name: Option<String>,
    /// Lifetime of the issued credentials in seconds (900 to 86400).
    #[arg(long, default_value_t = 3600)]
    duration: u32,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    auth: CloudAuthArgs,
}

/// What the injection looks like (shared by `serve` and `mutate`).
#[derive(clap::Args)]
struct InjectionArgs {
    /// Provider profile: the env var names, audience and paths the SDKs expect.
    #[arg(long, env = "POD_IDENTITY_PROVIDER", value_enum, default_value_t = Provider::Cce)]
    provider: Provider,
    /// Credential endpoint URL put in the pod (default: the profile's link-local endpoint).
    #[arg(long, env = "POD_IDENTITY_CREDENTIALS_URI")]
    credentials_uri: Option<String>,
    /// Lifetime of the projected token in seconds (values below 600 are raised to 600).
    #[arg(long, env = "POD_IDENTITY_TOKEN_EXPIRATION", default_value_t = DEFAULT_TOKEN_EXPIRATION)]
    token_expiration: i64,
}

impl InjectionArgs {
    fn injection(&self) -> Injection {
        if self.token_expiration < MIN_TOKEN_EXPIRATION {
            tracing::warn!(
                requested = self.token_expiration,
                used = MIN_TOKEN_EXPIRATION,
                "token expiration raised to the minimum"
            );
        }
        let profile = self.provider.profile();
        Injection::new(
            profile,
            Settings::new(profile, self.credentials_uri.clone(), self.token_expiration),
        )
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "POD_IDENTITY_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Directory with tls.crt and tls.key (reloaded on change); a localhost CA and
    /// certificate are generated there when both are absent.
    #[arg(long, env = "POD_IDENTITY_CERT_DIR", default_value = "certs")]
    cert_dir: PathBuf,
    #[command(flatten)]
    source: SourceArgs,
    /// Cluster id reported in association records read from the cluster.
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ID")]
    cluster_id: Option<String>,
    #[command(flatten)]
    injection: InjectionArgs,
    /// Seconds between checks of the certificate and association files.
    #[arg(long, env = "POD_IDENTITY_RELOAD_INTERVAL", default_value_t = 2.0)]
    reload_interval: f64,
    /// Seconds a client has to finish the TLS handshake and send its request headers.
    #[arg(long, env = "POD_IDENTITY_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    header_read_timeout: f64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "POD_IDENTITY_SHUTDOWN_TIMEOUT", default_value_t = 25.0)]
    shutdown_timeout: f64,
}

#[derive(clap::Args)]
struct MutateArgs {
    /// Association file (YAML or JSON).
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS")]
    associations: PathBuf,
    /// Namespace of the pod (default: the review's, else the manifest's, else `default`).
    #[arg(long)]
    namespace: Option<String>,
    #[command(flatten)]
    injection: InjectionArgs,
    /// Print the JSON Patch instead of the mutated pod.
    #[arg(long)]
    patch: bool,
    /// Pod manifest or AdmissionReview (YAML or JSON); `-` reads standard input.
    input: PathBuf,
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// DNS names of the serving certificate (default: the in-cluster Service names).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// IP addresses of the serving certificate.
    #[arg(long = "ip")]
    ip: Vec<IpAddr>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Mutate(args) => mutate(args),
        Command::Certs(args) => gen_certs(args),
        Command::Agent(args) => agent(args),
        Command::Exchange(args) => exchange(args),
        Command::Crd => {
            print!("{}", pod_identity_webhook::association::crd::yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a terminal: escape codes in files and log collectors are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn seconds(name: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| format!("--{name} must be a non-negative number of seconds, got {s}").into())
}

fn serve(args: ServeArgs) -> Result {
    let mut config = ServeConfig::new(args.listen, args.cert_dir, args.injection.injection());
    config.reload_interval = seconds("reload-interval", args.reload_interval)?;
    config.header_read_timeout = seconds("header-read-timeout", args.header_read_timeout)?;
    config.shutdown_timeout = seconds("shutdown-timeout", args.shutdown_timeout)?;
    tracing::info!(
        provider = %args.injection.provider,
        credentials_uri = %config.injection.settings.credentials_uri,
        token_expiration = config.injection.settings.token_expiration,
        "starting pod identity webhook"
    );
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        config.source = args.source.resolve(args.cluster_id).await?;
        let server = Server::bind(config).await?;
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn mutate(args: MutateArgs) -> Result {
    let index: Index = file::load(&args.associations)?;
    let input = if args.input.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&args.input)
            .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?
    };
    let (out, reports) = offline::run(
        &input,
        args.namespace.as_deref(),
        &index,
        &args.injection.injection(),
        args.patch,
    )?;
    for r in reports {
        eprintln!("{}/{}: {}", r.namespace, r.service_account, r.outcome);
    }
    print!("{out}");
    Ok(())
}

fn gen_certs(args: CertsArgs) -> Result {
    let dns = if args.dns.is_empty() && args.ip.is_empty() {
        certs::SERVICE_DNS_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.dns
    };
    let material = certs::generate(&dns, &args.ip, args.days)?;
    certs::write(&args.out, &material)?;
    certs::write_cabundle_patch(&args.out, &material)?;
    let names: Vec<String> = dns
        .iter()
        .cloned()
        .chain(args.ip.iter().map(IpAddr::to_string))
        .collect();
    eprintln!(
        "wrote {}, {}, {} and {} to {} (names: {})",
        certs::CA_FILE,
        certs::CERT_FILE,
        certs::KEY_FILE,
        certs::CABUNDLE_PATCH_FILE,
        args.out.display(),
        names.join(", ")
    );
    println!("{}", material.ca_bundle());
    Ok(())
}

/// Starts the association source for a command other than `serve`.
fn start_source(
    source_kind: &AssociationSource,
) -> Result<(Arc<Store>, Arc<AtomicBool>, source::RunningSource)> {
    let store = Arc::new(Store::default());
    let synced = Arc::new(AtomicBool::new(false));
    let running = source::start(
        source_kind,
        store.clone(),
        Arc::new(Metrics::default()),
        synced.clone(),
        Duration::from_secs(2),
    )?;
    Ok((store, synced, running))
}

fn agent(args: AgentArgs) -> Result {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut config = AgentConfig::new(args.listen, args.admin_listen, args.provider);
        config.allowed_hosts.extend(args.allowed_hosts);
        config.cache = CacheConfig {
            capacity: args.cache_size,
            upstream_rate: args.upstream_rate,
            upstream_burst: args.upstream_burst,
            refresh_before: seconds("refresh-before", args.refresh_before)?,
            ..CacheConfig::default()
        };
        let mut running_source = None;
        let (backend, ready): (Arc<dyn pod_identity_webhook::agent::credentials::Backend>, _) = match args.backend {
            BackendKind::Local => {
                tracing::warn!(
                    "DEVELOPMENT ONLY: --backend local trusts token claims without verifying signatures and hands out FAKE credentials"
                );
                let source_kind = args.source.resolve(args.cluster_id.clone()).await?;
                let (store, synced, running) = start_source(&source_kind)?;
                running_source = Some(running);
                let lifetime = seconds("local-lifetime", args.local_lifetime)?;
                let audience = args.provider.profile().audience;
                (Arc::new(LocalBackend { store, audience, lifetime }), synced)
            }
            BackendKind::Cce => {
                let need = |v: Option<String>, flag: &str| v.ok_or_else(|| format!("--backend cce needs {flag}"));
                let endpoint = need(args.cce_endpoint, "--cce-endpoint")?;
                let project = need(args.project_id, "--project-id")?;
                let cluster = need(args.cluster_id, "--cluster-id")?;
                let backend = CceBackend::new(args.auth.client()?, &endpoint, &project, &cluster, args.auth.auth()?)?;
                (Arc::new(backend), Arc::new(AtomicBool::new(true)))
            }
        };
        let agent = Agent::bind(config, backend, ready).await?;
        agent.run(shutdown_signal()).await?;
        drop(running_source);
        Ok(())
    })
}

fn exchange(args: ExchangeArgs) -> Result {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let domain = match (args.domain_id, args.domain_name) {
            (Some(id), _) => Domain::Id(id),
            (None, Some(name)) => Domain::Name(name),
            (None, None) => return Err("set --domain-id or --domain-name".into()),
        };
        let iam = Iam::new(
            args.auth.client()?,
            &args.iam_endpoint,
            args.auth.auth()?,
            domain,
            args.duration,
        )?;
        let reviewer = Arc::new(KubeReviewer(kube_client().await?));
        let source_kind = args.source.resolve(Some(args.cluster_id.clone())).await?;
        let (store, synced, _running) = start_source(&source_kind)?;
        let config = ExchangeConfig {
            listen: args.listen,
            project_id: args.project_id,
            cluster_id: args.cluster_id,
            cert_dir: args.cert_dir,
        };
        let exchange = Exchange::bind(config, reviewer, store, synced, iam).await?;
        exchange.run(shutdown_signal()).await?;
        Ok(())
    })
}
