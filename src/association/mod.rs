//! Pod identity associations: the record (seed 001 shape) and its one validation (for the
//! file, the CRD and the API alike), the live index with its reader/writer split, and the
//! sources that fill it (a file, or the `PodIdentityAssociation` watch).

pub mod crd;
pub mod file;
mod index;
pub(crate) mod kubernetes;
pub(crate) mod migrate;
pub(crate) mod source;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::cloud::cce_association::Association;
pub(crate) use crate::cloud::cce_association::Tag;
pub use index::{Index, Reader, Writer, store};

/// At most this many tags per association (the cloud API's usual cap).
pub(crate) const MAX_TAGS: usize = 20;
/// The longest inline session policy STS accepts (plain text).
const MAX_POLICY: usize = 2048;
/// The token lifetimes an association may ask for: from the API server's shortest projected
/// token (10 minutes) to 48 hours, beyond which a leaked token outlives any reasonable need.
pub(crate) const TOKEN_LIFETIME: std::ops::RangeInclusive<i64> = 600..=172_800;

/// An association as written by a user: everything but the target optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssociationSpec {
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub agency_name: Option<String>,
    /// The `eks` profile's name for the identity to assume.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// `eks`: the role then assumed with `roleArn`'s credentials (cross-account).
    #[serde(default)]
    pub target_role_arn: Option<String>,
    /// `eks`: assume without the six session tags.
    #[serde(default)]
    pub disable_session_tags: bool,
    /// `eks`: an inline session policy (JSON), only with `disableSessionTags: true`.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Lifetime of the pods' projected token in seconds (the webhook keeps it in the API
    /// server's range); without it, the webhook's default.
    #[serde(default)]
    pub token_expiration_seconds: Option<i64>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub modified_at: Option<String>,
}

impl Association {
    /// The record as the live index keeps it: only what admission and credential issuing
    /// read (uid, service account, target, token lifetime). Tags, cluster id and timestamps are validated on
    /// the way in, not held for every association in memory.
    pub(crate) fn into_indexed(self) -> Self {
        Association {
            cluster_id: None,
            tags: Vec::new(),
            created_at: None,
            modified_at: None,
            ..self
        }
    }

    /// The agency (cce) or role ARN (eks) this association grants.
    pub fn target(&self) -> &str {
        self.agency_name
            .as_deref()
            .or(self.role_arn.as_deref())
            .unwrap_or("")
    }
}

/// The problems found in one association, all at once so a user fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub(crate) Vec<String>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl AssociationSpec {
    /// Checks the seed 001 rules and fills a stable uid when none is given.
    pub fn validate(self) -> Result<Association, Invalid> {
        let mut errs = Vec::new();
        if let Err(e) = check_dns_label(&self.namespace) {
            errs.push(format!("namespace {e}"));
        }
        if let Err(e) = check_dns_subdomain(&self.service_account) {
            errs.push(format!("serviceAccount {e}"));
        }
        let agency = self.agency_name.filter(|s| !s.is_empty());
        let role = self.role_arn.filter(|s| !s.is_empty());
        match (&agency, &role) {
            (None, None) => errs.push("agencyName (or roleArn) is required".into()),
            (Some(_), Some(_)) => errs.push("set either agencyName or roleArn, not both".into()),
            (Some(a), None) if a.len() > 64 || a.chars().any(char::is_control) => errs.push(format!(
                "agencyName {a:?} must be at most 64 printable characters"
            )),
            (None, Some(r)) if !r.starts_with("arn:") => {
                errs.push(format!("roleArn {r:?} must be an ARN (arn:...)"))
            }
            _ => {}
        }
        let target = self.target_role_arn.filter(|s| !s.is_empty());
        match (&target, &role) {
            (Some(_), None) => errs.push("targetRoleArn needs roleArn (the role that assumes it)".into()),
            (Some(t), _) if !t.starts_with("arn:") => {
                errs.push(format!("targetRoleArn {t:?} must be an ARN (arn:...)"))
            }
            _ => {}
        }
        let policy = self.policy.filter(|s| !s.is_empty());
        if let Some(p) = &policy {
            if !self.disable_session_tags {
                errs.push("policy is allowed only with disableSessionTags: true (as in EKS)".into());
            }
            if role.is_none() {
                errs.push("policy needs roleArn".into());
            }
            if p.len() > MAX_POLICY {
                errs.push(format!(
                    "policy must be at most {MAX_POLICY} characters, found {}",
                    p.len()
                ));
            }
        }
        if let Some(s) = self
            .token_expiration_seconds
            .filter(|s| !TOKEN_LIFETIME.contains(s))
        {
            errs.push(format!(
                "tokenExpirationSeconds {s} must be between 600 (10 minutes) and 172800 (48 hours)"
            ));
        }
        if self.tags.len() > MAX_TAGS {
            errs.push(format!(
                "at most {MAX_TAGS} tags are allowed, found {}",
                self.tags.len()
            ));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            if let Err(e) = check_tag_key(&tag.key) {
                errs.push(format!("tags[{i}].key {:?} {e}", tag.key));
            }
            if let Err(e) = check_tag_value(&tag.value) {
                errs.push(format!("tags[{i}].value {:?} {e}", tag.value));
            }
            if self.tags[..i].iter().any(|t| t.key == tag.key) {
                errs.push(format!("tags[{i}].key {:?} is repeated", tag.key));
            }
        }
        if !errs.is_empty() {
            return Err(Invalid(errs));
        }
        let uid = self
            .uid
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| stable_uid(&self.namespace, &self.service_account));
        let external_id = target.as_ref().map(|_| uid.clone());
        Ok(Association {
            uid,
            cluster_id: self.cluster_id,
            namespace: self.namespace,
            service_account: self.service_account,
            agency_name: agency,
            external_id,
            role_arn: role,
            target_role_arn: target,
            disable_session_tags: self.disable_session_tags,
            policy,
            tags: self.tags,
            token_expiration_seconds: self.token_expiration_seconds,
            created_at: self.created_at,
            modified_at: self.modified_at,
        })
    }
}

/// A uid derived from the service account, so every replica and restart agrees on it.
pub(crate) fn stable_uid(namespace: &str, service_account: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in ["podidentity.io/association", namespace, service_account] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let d = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: custom
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    check_dns_part(s)
}

fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    s.split('.').try_for_each(check_dns_part).map_err(|_| {
        format!(
            "{s:?} must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        )
    })
}

fn check_dns_part(s: &str) -> Result<(), String> {
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && ok_edge(s.chars().next())
        && ok_edge(s.chars().last());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// Seed 001: 1–128 characters, no leading/trailing space, letters, digits, spaces and
/// `_.:=+-@`, not starting with `_sys_`.
pub(crate) fn check_tag_key(k: &str) -> Result<(), String> {
    let n = k.chars().count();
    if n == 0 || n > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if k.starts_with(' ') || k.ends_with(' ') {
        return Err("must not start or end with a space".into());
    }
    if k.starts_with("_sys_") {
        return Err("must not start with _sys_ (reserved)".into());
    }
    check_tag_chars(k, "_.:=+-@")
}

/// Seed 001: at most 255 characters, letters, digits, spaces and `_.:/=+-@`; may be empty.
pub(crate) fn check_tag_value(v: &str) -> Result<(), String> {
    if v.chars().count() > 255 {
        return Err("must be at most 255 characters".into());
    }
    check_tag_chars(v, "_.:/=+-@")
}

fn check_tag_chars(s: &str, specials: &str) -> Result<(), String> {
    match s
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == ' ' || specials.contains(*c)))
    {
        None => Ok(()),
        Some(c) => Err(format!(
            "contains {c:?}; allowed are letters, digits, spaces and {specials}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ns: &str, sa: &str) -> AssociationSpec {
        AssociationSpec {
            namespace: ns.into(),
            service_account: sa.into(),
            agency_name: Some("agency".into()),
            ..Default::default()
        }
    }

    #[test]
    fn stable_uid_is_deterministic_and_uuid_shaped() {
        let a = stable_uid("ns", "sa");
        assert_eq!(a, stable_uid("ns", "sa"));
        assert_ne!(a, stable_uid("ns", "sb"));
        assert_ne!(stable_uid("a", "bc"), stable_uid("ab", "c"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }

    #[test]
    fn valid_spec_gets_generated_uid() {
        let a = spec("pi-demo", "app").validate().unwrap();
        assert_eq!(a.uid, stable_uid("pi-demo", "app"));
        assert_eq!(a.target(), "agency");
    }

    #[test]
    fn tag_rules_follow_seed_001() {
        assert!(check_tag_key("team").is_ok());
        assert!(check_tag_key("a b_c.d:e=f+g-h@i").is_ok());
        assert!(check_tag_key("数据").is_ok());
        assert!(check_tag_key("").is_err());
        assert!(check_tag_key(" x").is_err());
        assert!(check_tag_key("x ").is_err());
        assert!(check_tag_key("_sys_x").is_err());
        assert!(check_tag_key("a/b").is_err(), "slash is allowed in values only");
        assert!(check_tag_key(&"k".repeat(128)).is_ok());
        assert!(check_tag_key(&"k".repeat(129)).is_err());
        assert!(check_tag_value("").is_ok());
        assert!(check_tag_value("a/b").is_ok());
        assert!(check_tag_value(&"v".repeat(255)).is_ok());
        assert!(check_tag_value(&"v".repeat(256)).is_err());
        assert!(check_tag_value("a#b").is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let mut s = spec("Bad_NS", "");
        s.agency_name = None;
        s.tags = vec![
            Tag {
                key: "_sys_x".into(),
                value: "ok".into(),
            },
            Tag {
                key: "k".into(),
                value: "bad#".into(),
            },
            Tag {
                key: "k".into(),
                value: "".into(),
            },
        ];
        let err = s.validate().unwrap_err();
        let text = err.to_string();
        for needle in [
            "namespace",
            "serviceAccount is required",
            "agencyName",
            "_sys_",
            "bad#",
            "repeated",
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
    }

    #[test]
    fn eks_parity_fields_follow_the_eks_rules() {
        let mut s = spec("ns", "sa");
        s.agency_name = None;
        s.role_arn = Some("arn:aws:iam::1:role/first".into());
        s.target_role_arn = Some("arn:aws:iam::2:role/target".into());
        let a = s.clone().validate().unwrap();
        // The external id is the association's: shown in the record, checked by the target role.
        assert_eq!(a.external_id.as_deref(), Some(a.uid.as_str()));
        assert_eq!(a.clone().into_indexed().target_role_arn, a.target_role_arn);
        s.policy = Some(r#"{"Version":"2012-10-17","Statement":[]}"#.into());
        let e = s.clone().validate().unwrap_err().to_string();
        assert!(
            e.contains("policy is allowed only with disableSessionTags: true"),
            "{e}"
        );
        s.disable_session_tags = true;
        let a = s.clone().validate().unwrap();
        assert!(a.disable_session_tags && a.policy.is_some());
        s.policy = Some("x".repeat(2049));
        assert!(
            s.clone()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("at most 2048")
        );
        let mut s = spec("ns", "sa");
        s.target_role_arn = Some("arn:aws:iam::2:role/target".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("targetRoleArn needs roleArn"), "{e}");
    }

    #[test]
    fn token_lifetime_is_optional_and_within_ten_minutes_and_48_hours() {
        let mut s = spec("ns", "sa");
        assert_eq!(s.clone().validate().unwrap().token_expiration_seconds, None);
        for ok in [600, 3600, 172_800] {
            s.token_expiration_seconds = Some(ok);
            let a = s.clone().validate().unwrap();
            assert_eq!(a.token_expiration_seconds, Some(ok));
            assert_eq!(a.into_indexed().token_expiration_seconds, Some(ok));
        }
        for bad in [0, -5, 599, 172_801, 1 << 40] {
            s.token_expiration_seconds = Some(bad);
            let e = s.clone().validate().unwrap_err().to_string();
            assert!(
                e.contains("tokenExpirationSeconds")
                    && e.contains("between 600 (10 minutes) and 172800 (48 hours)"),
                "{e}"
            );
        }
    }

    #[test]
    fn agency_and_role_are_exclusive() {
        let mut s = spec("ns", "sa");
        s.role_arn = Some("arn:aws:iam::1:role/x".into());
        assert!(s.clone().validate().is_err());
        s.agency_name = None;
        assert_eq!(s.clone().validate().unwrap().target(), "arn:aws:iam::1:role/x");
        s.role_arn = Some("not-an-arn".into());
        assert!(s.validate().is_err());
    }
}
