//! The cluster-scoped `PodIdentityAssociation` (group `podidentity.io`, `v1alpha1`) that the
//! namespaced kind replaces: still read for one release (a namespaced association of the same
//! service account wins), never written by this program except by the migration, which
//! converts each object into its namespaced twin ([`twin`]).

#![allow(unreachable_pub)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::{CustomResourceExt, ObjectMeta, ResourceExt};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::v1beta1::{self, MODIFIED_AT};
use crate::association::Invalid;

/// The CRD's name, as `kubectl get crd` shows it.
pub const NAME: &str = "podidentityassociations.podidentity.io";

/// A cluster admin's association of `namespace/serviceAccount` with an agency (or role).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[kube(
    group = "podidentity.io",
    version = "v1alpha1",
    kind = "PodIdentityAssociation",
    plural = "podidentityassociations",
    category = "podidentity",
    doc = "Deprecated: the cluster-scoped association, read for one more release. Use iam.podidentity.io/v1beta1 (namespaced, named after the service account); `pod-identity-webhook migrate-associations` converts these. The name must be <namespace>.<serviceAccount>.",
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.namespace"),
    printcolumn(name = "ServiceAccount", type_ = "string", json_path = ".spec.serviceAccount"),
    printcolumn(name = "Agency", type_ = "string", json_path = ".spec.agencyName"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.roleArn", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name == self.spec.__namespace__ + '.' + self.spec.serviceAccount")
        .message("metadata.name must be <spec.namespace>.<spec.serviceAccount>: a service account has at most one association")
)]
// The rules on agency, role and policy come with the flattened fields.
#[serde(rename_all = "camelCase")]
pub struct PodIdentityAssociationSpec {
    /// Namespace of the service account. Immutable.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("namespace is immutable"))]
    pub namespace: String,
    /// The rest, as in the namespaced kind.
    #[serde(flatten)]
    pub fields: v1beta1::PodIdentityAssociationSpec,
}

/// The CRD as the API server should hold it.
pub fn definition() -> CustomResourceDefinition {
    v1beta1::held(PodIdentityAssociation::crd())
}

/// The namespaced object this one becomes: same spec, same record of its last change, in the
/// service account's namespace under its name. `keep_identity` keeps uid and timestamps (for
/// reading an old object as its record); the migration writes without them.
pub fn twin(
    old: &PodIdentityAssociation,
    keep_identity: bool,
) -> Result<v1beta1::PodIdentityAssociation, Invalid> {
    let spec = &old.spec;
    let expected = format!("{}.{}", spec.namespace, spec.fields.service_account);
    if old.name_any() != expected {
        return Err(Invalid(vec![format!("name must be {expected:?}")]));
    }
    let annotations = old
        .annotations()
        .get(MODIFIED_AT)
        .map(|t| [(MODIFIED_AT.to_owned(), t.clone())].into());
    let metadata = if keep_identity {
        ObjectMeta {
            name: Some(spec.fields.service_account.clone()),
            namespace: Some(spec.namespace.clone()),
            ..old.metadata.clone()
        }
    } else {
        ObjectMeta {
            name: Some(spec.fields.service_account.clone()),
            namespace: Some(spec.namespace.clone()),
            annotations,
            ..ObjectMeta::default()
        }
    };
    Ok(v1beta1::PodIdentityAssociation {
        metadata,
        spec: spec.fields.clone(),
    })
}

#[cfg(test)]
mod tests {
    use kube::core::cel::{validate_cel, validate_cel_update};

    use super::*;
    use crate::association::crd::to_association;

    fn old(name: &str, ns: &str, sa: &str) -> PodIdentityAssociation {
        PodIdentityAssociation {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some("u-old".into()),
                annotations: Some([(MODIFIED_AT.to_owned(), "2026-11-20T09:00:00Z".to_owned())].into()),
                ..Default::default()
            },
            spec: PodIdentityAssociationSpec {
                namespace: ns.into(),
                fields: super::v1beta1::PodIdentityAssociationSpec {
                    service_account: sa.into(),
                    agency_name: Some("agency".into()),
                    token_expiration_seconds: Some(3600),
                    ..Default::default()
                },
            },
        }
    }

    #[test]
    fn the_old_schema_stays_cluster_scoped_with_its_name_rule_and_no_short_name() {
        let crd = definition();
        assert_eq!(crd.metadata.name.as_deref(), Some(NAME));
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert!(
            crd.spec.names.short_names.is_none(),
            "`pia` names the namespaced kind"
        );
        let text = serde_json::to_string(&crd).unwrap();
        for needle in [
            "exactly one of agencyName and roleArn",
            "namespace is immutable",
            "serviceAccount is immutable",
        ] {
            assert!(text.contains(needle), "{needle} missing");
        }
        let e = validate_cel(&old("wrong", "a", "b")).unwrap_err().to_string();
        assert!(
            e.contains("metadata.name must be <spec.namespace>.<spec.serviceAccount>"),
            "{e}"
        );
        assert!(validate_cel(&old("a.b", "a", "b")).is_ok());
        let mut moved = old("a.b", "a", "b");
        moved.spec.namespace = "z".into();
        let e = validate_cel_update(&moved, &old("a.b", "a", "b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespace is immutable"), "{e}");
    }

    #[test]
    fn an_old_object_reads_as_its_namespaced_twin() {
        let o = old("pi-demo.app", "pi-demo", "app");
        let read = to_association(&twin(&o, true).unwrap(), Some("c")).unwrap();
        assert_eq!((read.uid.as_str(), read.namespace.as_str()), ("u-old", "pi-demo"));
        assert_eq!(read.service_account, "app");
        assert_eq!(read.target(), "agency");
        assert_eq!(read.token_expiration_seconds, Some(3600));
        assert_eq!(read.modified_at.as_deref(), Some("2026-11-20T09:00:00Z"));
        // What the migration writes: no identity of the old object, its record of change kept.
        let written = twin(&o, false).unwrap();
        assert_eq!(written.metadata.uid, None);
        assert_eq!(written.metadata.namespace.as_deref(), Some("pi-demo"));
        assert_eq!(written.name_any(), "app");
        assert_eq!(
            written.annotations().get(MODIFIED_AT).map(String::as_str),
            Some("2026-11-20T09:00:00Z")
        );
        assert_eq!(written.spec, o.spec.fields);
        assert!(twin(&old("pi-demo.other", "pi-demo", "app"), true).is_err());
    }
}
