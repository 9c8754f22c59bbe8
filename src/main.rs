//! Command line: one subcommand per job, each with its own argument struct.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use pod_identity_webhook::association::{Index, file};
use pod_identity_webhook::mutation::{
    DEFAULT_TOKEN_EXPIRATION, Injection, MIN_TOKEN_EXPIRATION, Provider, Settings,
};
use pod_identity_webhook::server::{AssociationSource, ServeConfig, Server};
use pod_identity_webhook::{certs, offline};

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
    /// Where associations come from: a file (`--associations`) or PodIdentityAssociation
    /// objects in the cluster (in-cluster config, or KUBECONFIG).
    #[arg(long, env = "POD_IDENTITY_SOURCE", value_enum, default_value_t = SourceKind::File)]
    source: SourceKind,
    /// Association file (YAML or JSON) for `--source file`, reloaded on change.
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS")]
    associations: Option<PathBuf>,
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
        config.source = match (args.source, args.associations) {
            (SourceKind::File, Some(path)) => AssociationSource::File(path),
            (SourceKind::File, None) => AssociationSource::None,
            (SourceKind::Kubernetes, None) => {
                let client = kube::Client::try_default().await.map_err(|e| {
                    format!(
                        "--source kubernetes: no usable cluster configuration (in-cluster or KUBECONFIG): {e}"
                    )
                })?;
                AssociationSource::Kubernetes {
                    client,
                    cluster_id: args.cluster_id,
                }
            }
            (SourceKind::Kubernetes, Some(_)) => {
                return Err("--associations is for --source file; drop it or use --source file".into());
            }
        };
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
