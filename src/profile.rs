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
};

/// Every profile, for what must know all of them (the pod view keeps only their token-file
/// env values).
pub static PROFILES: [&Profile; 2] = [&CCE, &EKS];

impl Profile {
    /// Full path of the token file inside a container.
    pub fn token_path(&self) -> String {
        format!("{}/{}", self.mount_path, self.token_file)
    }
}
