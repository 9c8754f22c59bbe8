//! The webhook's flags (`serve`, `mutate`, `explain`) and their checks into its settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::config::{ReportSettings, WebhookConfig};
use super::mutation::{
    DEFAULT_TOKEN_EXPIRATION, Injection, MAX_TOKEN_EXPIRATION, MIN_TOKEN_EXPIRATION, Settings,
};
use crate::args::{ArgError, seconds};
use crate::association::source;
use crate::http::LimitArgs;
use crate::profile::{Profile, Provider};

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
    pub(crate) source: source::Args,
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

impl TryFrom<ServeArgs> for WebhookConfig {
    type Error = ArgError;

    fn try_from(args: ServeArgs) -> Result<Self, ArgError> {
        let mut config = WebhookConfig::new(args.listen, args.cert_dir, args.injection.injection()?);
        config.source = args.source.source(args.cluster_id)?;
        config.reload_interval = seconds("reload-interval", args.reload_interval)?;
        config.limits = args.limits.limits(config.limits)?;
        if args.report.report_missed && config.source.needs_cluster() {
            config.report = Some(ReportSettings::try_from(args.report)?);
        }
        Ok(config)
    }
}

impl TryFrom<ReportArgs> for ReportSettings {
    type Error = ArgError;

    fn try_from(args: ReportArgs) -> Result<Self, ArgError> {
        if args.report_lease_seconds < 3 {
            return Err(ArgError(
                "--report-lease-seconds must be at least 3 (the holder renews a third before the end)".into(),
            ));
        }
        let identity = args.lease_identity.filter(|i| !i.is_empty()).unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "webhook".into());
            format!("{host}-{}", std::process::id())
        });
        Ok(ReportSettings {
            namespace: args.lease_namespace,
            identity,
            lease_seconds: args.report_lease_seconds,
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

#[cfg(test)]
mod tests {
    use super::*;

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
