//! Which pods the API server sends to the webhook: the MutatingWebhookConfiguration's namespace
//! and object selectors, read the way the API server reads label selectors. `explain` and the
//! missed-injection report both ask it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::manifest::{Input, ManifestError, documents};

/// The webhook configuration shipped in `manifests/base`: its selectors are used unless a
/// MutatingWebhookConfiguration of the user's is given.
const SHIPPED_WEBHOOK: &str = include_str!("../../manifests/base/webhook.yaml");

/// The MutatingWebhookConfiguration's name, as the manifests and the chart deploy it.
pub(crate) const WEBHOOK_CONFIGURATION: &str = "pod-identity-webhook";

/// The namespace label the shipped configuration selects on.
pub(crate) const OPT_IN: &str = "podidentity.io/injection";

/// The label the API server sets on every namespace, with the namespace's name.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One webhook's selectors.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Selection {
    pub(crate) namespace: Value,
    pub(crate) object: Value,
}

impl Selection {
    /// The selectors of the first webhook of `config` (a MutatingWebhookConfiguration).
    pub(crate) fn of(config: &Value) -> Self {
        let hook = &config["webhooks"][0];
        Selection {
            namespace: hook["namespaceSelector"].clone(),
            object: hook["objectSelector"].clone(),
        }
    }

    /// The shipped configuration's selectors.
    pub(crate) fn shipped() -> Result<Self, ManifestError> {
        let docs = documents(&Input {
            name: "manifests/base/webhook.yaml",
            text: SHIPPED_WEBHOOK,
        })?;
        docs.iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .map(Selection::of)
            .ok_or_else(|| ManifestError::Empty {
                input: "manifests/base/webhook.yaml".into(),
            })
    }

    /// Whether the namespace `name` with `labels` is selected.
    pub(crate) fn namespace_selected(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        // The API server sets this label on every namespace.
        let mut labels = labels.clone();
        labels.insert(NAME_LABEL.into(), name.to_owned());
        matches(&self.namespace, &labels)
    }

    /// Whether a pod with `labels` is selected.
    pub(crate) fn object_selected(&self, labels: &BTreeMap<String, String>) -> bool {
        matches(&self.object, labels)
    }
}

/// Whether `labels` satisfy a Kubernetes label selector (absent: everything).
fn matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector["matchLabels"].as_object().is_none_or(|m| {
        m.iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
    });
    let empty = Vec::new();
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .all(|e| {
            let value = e["key"].as_str().and_then(|k| labels.get(k));
            let listed = |v: &String| {
                e["values"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|x| x.as_str() == Some(v.as_str())))
            };
            match e["operator"].as_str() {
                Some("In") => value.is_some_and(listed),
                Some("NotIn") => !value.is_some_and(listed),
                Some("Exists") => value.is_some(),
                Some("DoesNotExist") => value.is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_as_the_api_server_reads_them() {
        let sel = serde_json::json!({"matchLabels": {"a": "1"}, "matchExpressions": [
            {"key": "b", "operator": "NotIn", "values": ["x"]},
            {"key": "c", "operator": "Exists"},
        ]});
        assert!(matches(&sel, &labels(&[("a", "1"), ("c", "")])));
        assert!(!matches(&sel, &labels(&[("a", "1"), ("c", ""), ("b", "x")])));
        assert!(!matches(&sel, &labels(&[("a", "2"), ("c", "")])));
        assert!(!matches(&sel, &labels(&[("a", "1")])));
        assert!(matches(&Value::Null, &labels(&[])));
    }

    #[test]
    fn the_shipped_selectors_take_opted_in_namespaces_but_never_the_system_ones() {
        let s = Selection::shipped().unwrap();
        let opted = labels(&[(OPT_IN, "enabled")]);
        assert!(s.namespace_selected("team-a", &opted));
        assert!(!s.namespace_selected("team-a", &labels(&[])));
        assert!(!s.namespace_selected("kube-system", &opted));
        assert!(!s.namespace_selected("pod-identity-system", &opted));
        assert!(s.object_selected(&labels(&[])));
        assert!(!s.object_selected(&labels(&[("podidentity.io/inject", "false")])));
    }
}
