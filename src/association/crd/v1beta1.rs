//! The namespaced kind, `iam.podidentity.io/v1beta1`: its schema and rules, and the record
//! read out of an object.

// kube's `KubeSchema` derive re-declares the spec structs, and the lint does not see the
// re-export of what it declares; the spec and the generated kind are reachable through `testing`.
#![allow(unreachable_pub)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::{CustomResourceExt, ResourceExt};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::association::{Association, AssociationSpec, Invalid, TOKEN_LIFETIME, Tag};

/// Which service account of this namespace may assume which agency (or role).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[kube(
    group = "iam.podidentity.io",
    version = "v1beta1",
    kind = "PodIdentityAssociation",
    plural = "podidentityassociations",
    shortname = "pia",
    category = "podidentity",
    namespaced,
    doc = "Associates a service account of this namespace with a cloud IAM agency (or role) for pod identity. The name must be the service account's.",
    printcolumn(name = "ServiceAccount", type_ = "string", json_path = ".spec.serviceAccount"),
    printcolumn(name = "Agency", type_ = "string", json_path = ".spec.agencyName"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.roleArn", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name == self.spec.serviceAccount")
        .message("metadata.name must be spec.serviceAccount: a service account has at most one association, named after it")
)]
#[x_kube(validation = Rule::new("has(self.agencyName) != has(self.roleArn)").message("set exactly one of agencyName and roleArn"))]
#[x_kube(validation = Rule::new("!has(self.policy) || (has(self.disableSessionTags) && self.disableSessionTags)").message("policy is allowed only with disableSessionTags: true"))]
#[x_kube(validation = Rule::new("!has(self.targetRoleArn) || has(self.roleArn)").message("targetRoleArn needs roleArn"))]
#[x_kube(validation = Rule::new("!has(self.policy) || has(self.roleArn)").message("policy needs roleArn"))]
#[serde(rename_all = "camelCase")]
pub struct PodIdentityAssociationSpec {
    /// Name of the service account. Immutable.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("serviceAccount is immutable"))]
    pub service_account: String,
    /// IAM agency the pods assume (cce profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub agency_name: Option<String>,
    /// IAM role ARN the pods assume (eks profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^arn:"))]
    pub role_arn: Option<String>,
    /// Role assumed with roleArn's credentials (eks, cross-account role chaining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^arn:"))]
    pub target_role_arn: Option<String>,
    /// Assume roleArn without the six EKS session tags (eks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_session_tags: bool,
    /// Inline session policy (JSON, eks); only with disableSessionTags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub policy: Option<String>,
    /// Resource tags (at most 20, unique keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key"]))]
    pub tags: Vec<CrdTag>,
    /// Lifetime in seconds of the pods' projected token (default: the webhook's), 600 (10
    /// minutes) to 172800 (48 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 600 && self <= 172800").message("tokenExpirationSeconds must be between 600 (10 minutes) and 172800 (48 hours)"))]
    pub token_expiration_seconds: Option<i64>,
}

/// A resource tag with the association API's rules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct CrdTag {
    /// 1–128 letters, digits, spaces and `_.:=+-@`; no leading or trailing space; not `_sys_`-prefixed.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[\p{L}\p{N} _.:=+\-@]+$"))]
    #[x_kube(
        validation = Rule::new("!self.startsWith(' ') && !self.endsWith(' ')").message("tag key must not start or end with a space"),
        validation = Rule::new("!self.startsWith('_sys_')").message("tag keys starting with _sys_ are reserved")
    )]
    pub key: String,
    /// Up to 255 letters, digits, spaces and `_.:/=+-@`.
    #[serde(default)]
    #[schemars(length(max = 255), regex(pattern = r"^[\p{L}\p{N} _.:/=+\-@]*$"))]
    pub value: String,
}

/// The CRD as the API server should hold it.
pub fn definition() -> CustomResourceDefinition {
    held(PodIdentityAssociation::crd())
}

pub(super) fn held(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).unwrap_or_default();
    strip_nullable(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Optional fields are left out, never null: without `nullable` the API server prunes a null
/// before validation, so `has(self.agencyName)` means "set".
fn strip_nullable(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("nullable");
            m.values_mut().for_each(strip_nullable);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nullable),
        _ => {}
    }
}

/// The annotation holding the time of the last spec change made through the association API
/// (the record's `modifiedAt`).
pub const MODIFIED_AT: &str = "podidentity.io/modified-at";

/// Reads the association record out of an object: identity fields come from metadata (uid,
/// namespace, creation and last-write times), not from a status that would repeat them.
pub fn to_association(
    obj: &PodIdentityAssociation,
    cluster_id: Option<&str>,
) -> Result<Association, Invalid> {
    if obj.name_any() != obj.spec.service_account {
        return Err(Invalid(vec![format!(
            "name must be the service account's, {:?}",
            obj.spec.service_account
        )]));
    }
    let meta = &obj.metadata;
    let namespace = meta
        .namespace
        .clone()
        .ok_or_else(|| Invalid(vec!["the object has no namespace".to_owned()]))?;
    let created = meta.creation_timestamp.as_ref().map(|t| t.0);
    // The association API records its spec changes in an annotation; objects written by other
    // means fall back on their last write.
    let annotated = obj
        .annotations()
        .get(MODIFIED_AT)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let modified = annotated.or_else(|| {
        meta.managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.time.as_ref().map(|t| t.0))
            .chain(created)
            .max()
    });
    let ts = |t: Option<jiff::Timestamp>| t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    AssociationSpec {
        uid: meta.uid.clone(),
        cluster_id: cluster_id.map(str::to_owned),
        namespace,
        service_account: obj.spec.service_account.clone(),
        agency_name: obj.spec.agency_name.clone(),
        role_arn: obj.spec.role_arn.clone(),
        target_role_arn: obj.spec.target_role_arn.clone(),
        disable_session_tags: obj.spec.disable_session_tags,
        policy: obj.spec.policy.clone(),
        tags: obj
            .spec
            .tags
            .iter()
            .map(|t| Tag {
                key: t.key.clone(),
                value: t.value.clone(),
            })
            .collect(),
        token_expiration_seconds: obj.spec.token_expiration_seconds.map(|s| {
            // Written before the CRD bounded it: kept, within the bounds, rather than dropped
            // (which would take its pods' credentials away on an upgrade).
            let within = s.clamp(*TOKEN_LIFETIME.start(), *TOKEN_LIFETIME.end());
            if within != s {
                tracing::warn!(
                    association = obj.name_any(),
                    requested = s,
                    used = within,
                    "tokenExpirationSeconds outside 600..172800: used within the bounds; update the object"
                );
            }
            within
        }),
        created_at: ts(created),
        modified_at: ts(modified),
    }
    .validate()
}

#[cfg(test)]
mod tests {
    use kube::core::ObjectMeta;
    use kube::core::cel::{validate_cel, validate_cel_update};

    use super::*;
    use crate::association::{check_tag_key, check_tag_value};

    /// An object named `name` in namespace `pi-demo`.
    fn object(name: &str, spec: PodIdentityAssociationSpec) -> PodIdentityAssociation {
        PodIdentityAssociation {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("pi-demo".into()),
                ..Default::default()
            },
            spec,
        }
    }

    fn spec(sa: &str) -> PodIdentityAssociationSpec {
        PodIdentityAssociationSpec {
            service_account: sa.into(),
            agency_name: Some("agency".into()),
            ..Default::default()
        }
    }

    fn errors(obj: &PodIdentityAssociation) -> String {
        validate_cel(obj).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn schema_is_namespaced_v1beta1_with_the_api_rules() {
        let crd = definition();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("podidentityassociations.iam.podidentity.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1beta1");
        let text = serde_json::to_string(&crd).unwrap();
        for needle in [
            r#""maxItems":20"#,
            r#""maxLength":128"#,
            r#""maxLength":255"#,
            r#""x-kubernetes-list-type":"map""#,
            "_sys_",
            "self == oldSelf",
        ] {
            assert!(text.contains(needle), "{needle} missing");
        }
        assert!(!text.contains("nullable"));
        let spec = &serde_json::to_value(&crd).unwrap()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"];
        assert_eq!(spec["tokenExpirationSeconds"]["type"], "integer");
    }

    #[test]
    fn cel_accepts_a_well_formed_object() {
        let mut s = spec("app");
        s.tags = vec![CrdTag {
            key: "team".into(),
            value: "payments".into(),
        }];
        assert_eq!(errors(&object("app", s)), "");
    }

    #[test]
    fn cel_allows_a_policy_only_without_session_tags() {
        let mut s = spec("app");
        s.agency_name = None;
        s.role_arn = Some("arn:aws:iam::1:role/r".into());
        s.policy = Some("{}".into());
        let e = errors(&object("app", s.clone()));
        assert!(
            e.contains("policy is allowed only with disableSessionTags: true"),
            "{e}"
        );
        s.disable_session_tags = true;
        assert_eq!(errors(&object("app", s.clone())), "");
        s.role_arn = None;
        s.agency_name = Some("a".into());
        s.target_role_arn = Some("arn:aws:iam::2:role/t".into());
        assert!(errors(&object("app", s)).contains("targetRoleArn needs roleArn"));
    }

    #[test]
    fn cel_requires_the_name_to_be_the_service_account() {
        let e = errors(&object("my-association", spec("app")));
        assert!(e.contains("metadata.name must be spec.serviceAccount"), "{e}");
        assert_eq!(errors(&object("app", spec("app"))), "");
    }

    #[test]
    fn cel_requires_exactly_one_target() {
        let mut s = spec("b");
        s.role_arn = Some("arn:aws:iam::1:role/r".into());
        assert!(errors(&object("b", s.clone())).contains("exactly one of agencyName and roleArn"));
        s.agency_name = None;
        assert_eq!(errors(&object("b", s.clone())), "");
        s.role_arn = None;
        assert!(errors(&object("b", s)).contains("exactly one of agencyName and roleArn"));
    }

    #[test]
    fn cel_wants_a_token_lifetime_between_ten_minutes_and_48_hours() {
        for (seconds, ok) in [
            (Some(600), true),
            (Some(3600), true),
            (Some(172_800), true),
            (None, true),
            (Some(599), false),
            (Some(0), false),
            (Some(-5), false),
            (Some(172_801), false),
        ] {
            let mut s = spec("b");
            s.token_expiration_seconds = seconds;
            let e = errors(&object("b", s));
            assert_eq!(e.is_empty(), ok, "{seconds:?}: {e}");
            if !ok {
                assert!(
                    e.contains(
                        "tokenExpirationSeconds must be between 600 (10 minutes) and 172800 (48 hours)"
                    ),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn cel_checks_tag_keys() {
        for (key, needle) in [
            ("_sys_x", "reserved"),
            (" x", "start or end with a space"),
            ("x ", "start or end with a space"),
        ] {
            let mut s = spec("b");
            s.tags = vec![CrdTag {
                key: key.into(),
                value: String::new(),
            }];
            assert!(errors(&object("b", s)).contains(needle), "{key:?}");
        }
    }

    #[test]
    fn cel_keeps_the_service_account_immutable() {
        let old = object("b", spec("b"));
        let mut new = old.clone();
        new.spec.agency_name = Some("other".into());
        assert!(validate_cel_update(&new, &old).is_ok(), "the agency may change");
        new.spec.service_account = "c".into();
        let e = validate_cel_update(&new, &old).unwrap_err().to_string();
        assert!(e.contains("serviceAccount is immutable"), "{e}");
    }

    /// The schema patterns plus the CEL rules accept exactly what the file source accepts.
    #[test]
    fn schema_patterns_agree_with_the_file_validation() {
        let crd = serde_json::to_value(definition()).unwrap();
        let tag = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["tags"]["items"]["properties"];
        let key_re = regex::Regex::new(tag["key"]["pattern"].as_str().unwrap()).unwrap();
        let value_re = regex::Regex::new(tag["value"]["pattern"].as_str().unwrap()).unwrap();
        for k in [
            "team", "a b", "k_.:=+-@", "数据", "_sys_x", " x", "x ", "a/b", "a#b", "", "é1",
        ] {
            let mut s = spec("b");
            s.tags = vec![CrdTag {
                key: k.into(),
                value: String::new(),
            }];
            let api_server = key_re.is_match(k) && !k.is_empty() && errors(&object("b", s)).is_empty();
            assert_eq!(api_server, check_tag_key(k).is_ok(), "key {k:?}");
        }
        for v in ["", "a/b", "x y", "a#b", "v=1+2@h:3", "ünï"] {
            assert_eq!(value_re.is_match(v), check_tag_value(v).is_ok(), "value {v:?}");
        }
    }

    #[test]
    fn an_object_written_before_the_bounds_keeps_its_association_within_them() {
        for (stored, used) in [(300, 600), (1 << 40, 172_800), (3600, 3600)] {
            let mut s = spec("b");
            s.token_expiration_seconds = Some(stored);
            let a = to_association(&object("b", s), None).unwrap();
            assert_eq!(a.token_expiration_seconds, Some(used), "{stored}");
        }
    }

    #[test]
    fn record_is_read_from_metadata() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
        let mut s = spec("app");
        s.token_expiration_seconds = Some(3600);
        let mut obj = object("app", s);
        obj.metadata.uid = Some("u-1".into());
        obj.metadata.creation_timestamp = Some(Time("2026-11-20T08:15:30Z".parse().unwrap()));
        obj.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            time: Some(Time("2026-11-21T10:44:05Z".parse().unwrap())),
            ..Default::default()
        }]);
        let a = to_association(&obj, Some("c-1")).unwrap();
        assert_eq!(a.uid, "u-1");
        assert_eq!(
            (a.namespace.as_str(), a.service_account.as_str()),
            ("pi-demo", "app")
        );
        assert_eq!(a.cluster_id.as_deref(), Some("c-1"));
        assert_eq!(a.created_at.as_deref(), Some("2026-11-20T08:15:30Z"));
        assert_eq!(a.modified_at.as_deref(), Some("2026-11-21T10:44:05Z"));
        assert_eq!(a.token_expiration_seconds, Some(3600));
        // The API record carries it under its camelCase name.
        let record = serde_json::to_value(&a).unwrap();
        assert_eq!(record["tokenExpirationSeconds"], 3600);
        assert!(to_association(&object("wrong", spec("app")), None).is_err());
        let mut nowhere = object("app", spec("app"));
        nowhere.metadata.namespace = None;
        assert!(to_association(&nowhere, None).is_err());
        // The association API's record of its last spec change wins over the last write.
        obj.metadata.annotations = Some([(MODIFIED_AT.to_owned(), "2026-11-20T09:00:00Z".to_owned())].into());
        let a = to_association(&obj, None).unwrap();
        assert_eq!(a.modified_at.as_deref(), Some("2026-11-20T09:00:00Z"));
    }
}
