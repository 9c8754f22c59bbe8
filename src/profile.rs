//! Provider profiles: the exact names the cloud SDKs look for, used by all three programs.
//! Each literal is written here once.

use std::fmt;

/// Which cloud's SDK conventions the injection follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Provider {
    /// Huawei Cloud CCE pod identity (`HC_*` variables, audience `service.cce.pods`).
    #[default]
    Cce,
    /// EKS Pod Identity (`AWS_*` variables, audience `pods.eks.amazonaws.com`).
    Eks,
}

impl Provider {
    pub fn profile(self) -> &'static Profile {
        match self {
            Provider::Cce => &CCE,
            Provider::Eks => &EKS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cce => "cce",
            Provider::Eks => "eks",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names one provider's SDKs depend on.
#[derive(Debug, PartialEq, Eq)]
pub struct Profile {
    /// Audience of the projected service-account token.
    pub audience: &'static str,
    /// Env var holding the credential endpoint URL.
    pub endpoint_env: &'static str,
    /// Env var holding the path of the token file.
    pub token_file_env: &'static str,
    /// Name of the projected volume (and of its mounts).
    pub volume_name: &'static str,
    /// Directory the volume is mounted at.
    pub mount_path: &'static str,
    /// File name of the token inside the mount.
    pub token_file: &'static str,
    /// Endpoint used when `--credentials-uri` is not given.
    pub default_endpoint: &'static str,
    /// Env vars set to the configured region (`--aws-region`); empty when the profile has none.
    pub region_envs: &'static [&'static str],
    /// Env vars injected with a fixed value alongside the region.
    pub regional_envs: &'static [(&'static str, &'static str)],
    /// The only hosts the SDKs call over plain `http` besides loopback addresses; `None` when
    /// they call any host.
    pub plain_http_hosts: Option<&'static [&'static str]>,
}

pub static CCE: Profile = Profile {
    audience: "service.cce.pods",
    endpoint_env: "HC_CONTAINER_CREDENTIALS_FULL_URI",
    token_file_env: "HC_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    volume_name: "cce-pod-identity-token",
    mount_path: "/var/run/secrets/service.cce.pods/serviceaccount",
    token_file: "cce-pod-identity-token",
    default_endpoint: "http://169.254.170.23/v1/credentials",
    region_envs: &[],
    regional_envs: &[],
    plain_http_hosts: None,
};

pub static EKS: Profile = Profile {
    audience: "pods.eks.amazonaws.com",
    endpoint_env: "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    token_file_env: "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    volume_name: "eks-pod-identity-token",
    mount_path: "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
    token_file: "eks-pod-identity-token",
    default_endpoint: "http://169.254.170.23/v1/credentials",
    // As the EKS pod identity webhook sets them.
    region_envs: &["AWS_REGION", "AWS_DEFAULT_REGION"],
    regional_envs: &[("AWS_STS_REGIONAL_ENDPOINTS", "regional")],
    // botocore's ContainerMetadataFetcher and the other AWS SDKs refuse any other http host.
    plain_http_hosts: Some(&["169.254.170.2", "169.254.170.23", "fd00:ec2::23", "localhost"]),
};

/// Every profile, for what must know all of them (the pod view keeps only their token-file
/// env values).
pub static PROFILES: [&Profile; 2] = [&CCE, &EKS];

impl Profile {
    /// Full path of the token file inside a container.
    pub fn token_path(&self) -> String {
        format!("{}/{}", self.mount_path, self.token_file)
    }

    /// Why the SDKs would refuse `url` as their credential endpoint, if they would: the `eks`
    /// SDKs call a plain-`http` endpoint only on a loopback address or one of
    /// [`plain_http_hosts`](Self::plain_http_hosts).
    pub fn refuses_endpoint(&self, url: &url::Url) -> Option<String> {
        let allowed = self.plain_http_hosts?;
        if url.scheme() != "http" {
            return None;
        }
        let loopback = match url.host()? {
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
            url::Host::Domain(_) => false,
        };
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']');
        if loopback || allowed.contains(&host) {
            return None;
        }
        Some(format!(
            "the SDKs refuse a plain-http credentials URI on {host}: use https, a loopback address or one of {}",
            allowed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eks_sdks_take_plain_http_only_on_their_hosts() {
        let refused = |p: &Profile, u: &str| p.refuses_endpoint(&url::Url::parse(u).unwrap());
        for ok in [
            "http://169.254.170.23/v1/credentials",
            "http://169.254.170.2/v2/credentials/x",
            "http://[fd00:ec2::23]/v1/credentials",
            "http://127.0.0.1:2703/v1/credentials",
            "http://127.9.9.9/c",
            "http://[::1]:80/c",
            "http://localhost:2703/c",
            "https://creds.example.com/c",
        ] {
            assert_eq!(refused(&EKS, ok), None, "{ok}");
        }
        for bad in [
            "http://10.0.0.1/v1/credentials",
            "http://[fd00:ec2::24]/c",
            "http://creds.example.com/c",
        ] {
            let why = refused(&EKS, bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(
                why.contains("plain-http") && why.contains("169.254.170.23"),
                "{why}"
            );
            assert_eq!(refused(&CCE, bad), None, "the cce SDK takes any host: {bad}");
        }
    }
}
