//! The exchange's IAM client: seed 003, temporary credentials through an agency.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::cloud::auth::CloudAuth;
use crate::cloud::client::{ClientError, Upstream, endpoint_url};
use crate::cloud::iam_assume_role::{self, AssumeRole, AssumeRoleRequest, SessionUser};
use crate::cloud::{Credentials, UpstreamError};

/// The delegating account, by id (preferred) or name.
#[derive(Debug, Clone)]
pub enum Domain {
    Id(String),
    Name(String),
}

pub struct Iam {
    client: Upstream,
    url: reqwest::Url,
    auth: CloudAuth,
    domain: Domain,
    /// Credential lifetime, clamped to IAM's 15 min – 24 h.
    duration_seconds: u32,
}

impl Iam {
    pub fn new(
        client: Upstream,
        endpoint: &str,
        auth: CloudAuth,
        domain: Domain,
        duration_seconds: u32,
    ) -> Result<Self, ClientError> {
        let url = endpoint_url(endpoint, iam_assume_role::PATH, "--iam-endpoint")?;
        Ok(Iam {
            client,
            url,
            auth,
            domain,
            duration_seconds: duration_seconds.clamp(900, 86_400),
        })
    }

    /// What the assumed-agency urn names as the account.
    pub(crate) fn domain_label(&self) -> &str {
        match &self.domain {
            Domain::Id(s) | Domain::Name(s) => s,
        }
    }

    pub(crate) async fn assume(&self, agency: &str, session: &str) -> Result<Credentials, UpstreamError> {
        let (domain_id, domain_name) = match &self.domain {
            Domain::Id(id) => (Some(id.as_str()), None),
            Domain::Name(name) => (None, Some(name.as_str())),
        };
        let request = AssumeRoleRequest::new(AssumeRole {
            agency_name: agency,
            domain_id,
            domain_name,
            duration_seconds: self.duration_seconds,
            session_user: SessionUser { name: session },
        });
        let body = serde_json::to_vec(&request).unwrap_or_default();
        // Every header is in place before the signature is computed over them.
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(iam_assume_role::CONTENT_TYPE),
        );
        self.auth.apply("POST", &self.url, &mut headers, &body)?;
        let answer = self
            .client
            .post(&self.url, headers, body, iam_assume_role::CREATED)
            .await?;
        Credentials::from_seed_003(&answer)
    }
}

/// Seed 003: a session name is at most this long.
const SESSION_NAME_MAX: usize = 64;

/// `session_user.name` for a pod: 5–64 letters, digits, spaces, `-`, `_`, `.`, starting with a
/// letter (seed 003), so that IAM's audit trail names the pod.
///
/// `cce-<cluster>-<pod>` when it fits. Otherwise the cluster id is cut to its first 8
/// characters (a UUID's first group: enough to recognise the cluster); and when the pod name
/// still does not fit, its middle gives way to a hash of the whole pair: the start (the
/// workload's name) and the end (a ReplicaSet pod's `-<template hash>-<random>` suffix) stay
/// readable, and two pods never share a name because the hash and the suffix differ.
pub(crate) fn session_name(cluster_id: &str, pod: &str) -> String {
    // The characters seed 003 allows in a session name.
    let clean = |s: &str| super::redeem::session_chars(s, "-_.");
    let (cluster, pod_part) = (clean(cluster_id), clean(pod));
    let full = format!("cce-{cluster}-{pod_part}");
    if full.len() <= SESSION_NAME_MAX {
        // Seed 003 wants at least 5 characters: "cce-" and a separator make five.
        return full;
    }
    let short = format!("cce-{}-", &cluster[..cluster.len().min(8)]);
    if short.len() + pod_part.len() <= SESSION_NAME_MAX {
        return short + &pod_part;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{cluster_id}/{pod}").as_bytes());
    let hash: String = digest.as_ref()[..3].iter().map(|b| format!("{b:02x}")).collect();
    // `<head>.<hash>.<tail>`: the tail keeps `-<10-char template hash>-<5-char random>`.
    let room = SESSION_NAME_MAX - short.len() - hash.len() - 2;
    let tail_len = 17.min(room / 2);
    let head = &pod_part[..room - tail_len];
    let tail = &pod_part[pod_part.len() - tail_len..];
    format!("{short}{head}.{hash}.{}", tail.trim_start_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 003's rules for `session_user.name`.
    fn valid(s: &str) -> bool {
        (5..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || " -_.".contains(c))
    }

    #[test]
    fn session_names_follow_the_iam_rules() {
        let s = session_name("46db1d50-b49f", "app-7f9c");
        assert_eq!(s, "cce-46db1d50-b49f-app-7f9c");
        for (cluster, pod) in [
            ("c".repeat(40), "p".repeat(40)),
            ("x".into(), "a/b:c".into()),
            (String::new(), String::new()),
            ("46db1d50-b49f-48e5-a312-27645af73405".into(), "p".repeat(253)),
            ("é".repeat(30), "ü".repeat(30)),
        ] {
            let s = session_name(&cluster, &pod);
            assert!(valid(&s), "{s:?}");
        }
    }

    #[test]
    fn pods_of_one_replicaset_keep_distinct_recognisable_names() {
        let cluster = "46db1d50-b49f-48e5-a312-27645af73405";
        for deployment in [
            "payments-api",
            "payments-reconciliation-worker",
            "a-really-long-deployment-name-that-fills-most-of-the-sixty-three",
        ] {
            let pods = [
                format!("{deployment}-7f9c8d6b5c-x2x9z"),
                format!("{deployment}-7f9c8d6b5c-q8w4m"),
                format!("{deployment}-55d7b8c9f4-x2x9z"),
            ];
            let names: Vec<String> = pods.iter().map(|p| session_name(cluster, p)).collect();
            for (pod, name) in pods.iter().zip(&names) {
                assert!(valid(name), "{name:?}");
                assert!(
                    name.starts_with("cce-46db1d50-"),
                    "{name}: the cluster is recognisable"
                );
                let suffix = &pod[pod.len() - 16..];
                assert!(name.ends_with(suffix), "{name}: keeps the pod's suffix {suffix}");
                assert!(name.contains(&deployment[..deployment.len().min(20)]), "{name}");
            }
            assert_ne!(names[0], names[1], "{names:?}");
            assert_ne!(names[0], names[2], "{names:?}");
            assert_ne!(names[1], names[2], "{names:?}");
        }
        // The same pod always gets the same name; another cluster, another name.
        let pod = "a-really-long-deployment-name-that-fills-most-of-the-sixty-three-7f9c8d6b5c-x2x9z";
        assert_eq!(session_name(cluster, pod), session_name(cluster, pod));
        assert_ne!(
            session_name(cluster, pod),
            session_name("46db1d50-0000-48e5-a312-27645af73405", pod)
        );
    }
}
