//! `explain`: why a pod has, or would get, credentials or not, in the order the API server and
//! the webhook decide it: the webhook configuration's namespace and object selectors, then the
//! webhook's own decision ([`decide`], as `serve` and `mutate` make it), then whether the pod
//! carries the injection. Each finding that stops the injection comes with the next step.

use std::collections::BTreeMap;

use serde_json::Value;

use super::args::ExplainArgs;
use super::decide::{Decision, decide};
use super::manifest::{Input, ManifestError, documents, input_name, read_input};
use super::mutation::{ASSOCIATION_ANNOTATION, Injection, Pod, SKIP_CONTAINERS_ANNOTATION};
use super::offline::OfflineError;
use super::selection::{OPT_IN, Selection};
use crate::association::Index;
use crate::association::file;

/// What `explain` concludes; the process exits with [`Verdict::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The pod carries the injection, or would get it when created.
    Credentials,
    /// The pod would not be injected: a selector, the opt-out label, no association, or nothing
    /// to inject into.
    NotInjected,
    /// The pod exists (it has a uid) and would be injected now, but was not: recreate it.
    Missed,
}

impl Verdict {
    /// The exit status: 0 credentials, 1 not injected, 3 missed (recreate); 2 is an error
    /// (unreadable input or associations), as for every command.
    pub fn code(self) -> u8 {
        match self {
            Verdict::Credentials => 0,
            Verdict::NotInjected => 1,
            Verdict::Missed => 3,
        }
    }
}

/// The findings, one line each, and the verdict.
#[derive(Debug)]
pub struct Explanation {
    pub lines: Vec<String>,
    pub verdict: Verdict,
}

/// `explain`: prints the explanation and returns the verdict. The input is a manifest file (or
/// `-`), or `NAMESPACE/NAME` of a live pod read with the user's kubeconfig.
pub fn command(args: ExplainArgs) -> Result<Verdict, OfflineError> {
    let injection = args.injection.injection()?;
    let mut labels: Option<BTreeMap<String, String>> = None;
    for l in &args.namespace_labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.get_or_insert_default().insert(k.to_owned(), v.to_owned());
    }
    let given = args.associations.as_deref().map(file::load).transpose()?;
    let target = args.input.to_str().unwrap_or_default();
    let live_pod = target != "-" && !args.input.exists() && target.split('/').count() == 2;
    let (docs, index) = match live_pod {
        true => live::fetch(target, given)?,
        false => {
            let text = read_input(&args.input)?;
            let name = input_name(&args.input);
            let docs = documents(&Input {
                name: &name,
                text: &text,
            })?;
            let index = given.ok_or_else(|| {
                OfflineError::Args(crate::args::ArgError(
                    "explain of a manifest needs --associations".into(),
                ))
            })?;
            (docs, index)
        }
    };
    let e = explain_docs(
        &args.input.display().to_string(),
        &docs,
        args.namespace.as_deref(),
        labels,
        &index,
        &injection,
    )?;
    for line in &e.lines {
        println!("{line}");
    }
    Ok(e.verdict)
}

/// Explains the first Pod of `text` (YAML or JSON documents). A Namespace document in `text`
/// gives the namespace's labels unless `labels` does; a MutatingWebhookConfiguration gives the
/// selectors, else the shipped ones.
pub fn explain(
    input: &str,
    text: &str,
    namespace: Option<&str>,
    labels: Option<BTreeMap<String, String>>,
    index: &Index,
    injection: &Injection,
) -> Result<Explanation, OfflineError> {
    let docs = documents(&Input { name: input, text })?;
    explain_docs(input, &docs, namespace, labels, index, injection)
}

/// The same on parsed documents.
fn explain_docs(
    input: &str,
    docs: &[Value],
    namespace: Option<&str>,
    labels: Option<BTreeMap<String, String>>,
    index: &Index,
    injection: &Injection,
) -> Result<Explanation, OfflineError> {
    let kind = |d: &&Value, k: &str| d["kind"] == k;
    let pod_doc = docs
        .iter()
        .find(|d| kind(d, "Pod"))
        .ok_or_else(|| ManifestError::Empty {
            input: input.to_owned(),
        })?;
    let pod = <Pod as serde::Deserialize>::deserialize(pod_doc).map_err(|e| OfflineError::BadPod {
        input: input.to_owned(),
        number: 1,
        pod: String::new(),
        message: e.to_string(),
    })?;
    let ns = namespace.or(pod.namespace()).unwrap_or("default").to_owned();
    // The input's own webhook configuration, else the shipped one.
    let selection = match docs.iter().find(|d| kind(d, "MutatingWebhookConfiguration")) {
        Some(c) => Selection::of(c),
        None => Selection::shipped()?,
    };
    let labels = labels.or_else(|| {
        docs.iter()
            .find(|d| kind(d, "Namespace") && d["metadata"]["name"] == ns.as_str())
            .map(|n| string_map(&n["metadata"]["labels"]))
    });
    let mut lines = Vec::new();
    let mut blocked = false;
    let pod_name = pod_doc["metadata"]["name"]
        .as_str()
        .or(pod_doc["metadata"]["generateName"].as_str())
        .unwrap_or("<unnamed>");
    lines.push(format!(
        "pod {ns}/{pod_name}, service account {}",
        pod.service_account()
    ));

    // 1. The API server sends the pod to the webhook only if both selectors match.
    match &labels {
        Some(labels) => {
            if selection.namespace_selected(&ns, labels) {
                lines.push(format!("ok   namespace {ns} is selected by the webhook configuration"));
            } else {
                blocked = true;
                lines.push(format!(
                    "NO   namespace {ns} is not selected by the webhook configuration's namespaceSelector {}",
                    selection.namespace
                ));
                lines.push(format!(
                    "     next: kubectl label namespace {ns} {OPT_IN}=enabled (kube-system and pod-identity-system are never injected)"
                ));
            }
        }
        None => lines.push(format!(
            "?    namespace {ns}: labels not given (--namespace-label, or a Namespace in the input); it must carry {OPT_IN}=enabled"
        )),
    }
    let pod_labels = string_map(&pod_doc["metadata"]["labels"]);
    if selection.object_selected(&pod_labels) {
        lines.push("ok   the pod's labels are selected by the objectSelector".to_owned());
    } else {
        blocked = true;
        lines.push(format!(
            "NO   the pod's labels are not selected by the objectSelector {} (opt-out label podidentity.io/inject=false)",
            selection.object
        ));
        lines
            .push("     next: remove the label podidentity.io/inject=false from the pod template".to_owned());
    }

    // 2. The webhook's own decision.
    let mut would = false;
    match decide(&pod, &ns, index, injection, "") {
        Decision::NoAssociation => {
            blocked = true;
            lines.push(format!(
                "NO   no association for service account {ns}/{}",
                pod.service_account()
            ));
            lines.push(format!(
                "     next: create a PodIdentityAssociation for namespace {ns}, serviceAccount {} (or run the pod as a service account that has one)",
                pod.service_account()
            ));
        }
        Decision::Skipped(skip) => {
            blocked = true;
            lines.push(format!("NO   the webhook skips the pod: {}", skip.reason()));
        }
        Decision::Inject {
            association,
            mutation,
        } => {
            lines.push(format!(
                "ok   association {} grants {}",
                association.uid,
                association.target()
            ));
            if let Some(skipped) = annotation(pod_doc, SKIP_CONTAINERS_ANNOTATION) {
                lines.push(format!(
                    "     containers skipped by {SKIP_CONTAINERS_ANNOTATION}: {skipped}"
                ));
            }
            for w in &mutation.warnings {
                lines.push(format!("     warning: {w}"));
            }
            if mutation.served == 0 {
                blocked = true;
                lines.push("NO   no container can take the identity (see the warnings)".to_owned());
            } else {
                would = true;
                lines.push(format!("ok   {} container(s) get the identity", mutation.served));
            }
        }
    }

    // 3. What the pod carries.
    let injected = annotation(pod_doc, ASSOCIATION_ANNOTATION).is_some();
    let exists = pod_doc["metadata"]["uid"].is_string();
    let verdict = if injected {
        lines.push(format!(
            "ok   the pod carries the injection ({ASSOCIATION_ANNOTATION})"
        ));
        Verdict::Credentials
    } else if blocked || !would {
        Verdict::NotInjected
    } else if exists {
        lines.push(format!(
            "NO   the pod was created without the injection (no {ASSOCIATION_ANNOTATION}): it was admitted before its association existed, or while the webhook was unreachable"
        ));
        lines.push(
            "     next: recreate the pod (kubectl rollout restart its workload, or delete it)".to_owned(),
        );
        Verdict::Missed
    } else {
        lines.push("ok   the pod would be injected when created".to_owned());
        Verdict::Credentials
    };
    lines.push(
        match verdict {
            Verdict::Credentials => "verdict: credentials",
            Verdict::NotInjected => "verdict: no credentials",
            Verdict::Missed => "verdict: no credentials until the pod is recreated",
        }
        .to_owned(),
    );
    Ok(Explanation { lines, verdict })
}

/// Reading a live pod, its namespace, the webhook configuration and the associations from the
/// cluster of the user's kubeconfig.
mod live {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::Api;
    use serde_json::Value;

    use crate::association::Index;
    use crate::webhook::offline::OfflineError;

    fn failed(what: &str, e: impl std::fmt::Display) -> OfflineError {
        OfflineError::Live(format!("{what}: {e}"))
    }

    /// The pod `NAMESPACE/NAME`, its Namespace and the webhook configuration (each left out when
    /// it cannot be read, and the explanation says what is unknown), and the associations:
    /// `given`, else the cluster's.
    pub(super) fn fetch(target: &str, given: Option<Index>) -> Result<(Vec<Value>, Index), OfflineError> {
        let (ns, name) = target
            .split_once('/')
            .ok_or_else(|| failed(target, "expected NAMESPACE/NAME"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed("runtime", e))?;
        runtime.block_on(async {
            let config = crate::kube_client::config()
                .await
                .map_err(|e| failed("kubeconfig", e))?;
            let client = kube::Client::try_from(config).map_err(|e| failed("kubeconfig", e))?;
            let pod = Api::<Pod>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| failed(&format!("pod {target}"), e))?;
            let mut docs = vec![serde_json::to_value(pod).map_err(|e| failed("pod", e))?];
            if let Ok(n) = Api::<Namespace>::all(client.clone()).get(ns).await {
                docs.push(serde_json::to_value(n).map_err(|e| failed("namespace", e))?);
            }
            if let Ok(w) = Api::<MutatingWebhookConfiguration>::all(client.clone())
                .get(crate::webhook::selection::WEBHOOK_CONFIGURATION)
                .await
            {
                docs.push(serde_json::to_value(w).map_err(|e| failed("webhook configuration", e))?);
            }
            let index = match given {
                Some(index) => index,
                None => crate::association::kubernetes::list_once(&client)
                    .await
                    .map_err(|e| failed("PodIdentityAssociations", e))?,
            };
            Ok((docs, index))
        })
    }
}

fn annotation<'v>(pod: &'v Value, key: &str) -> Option<&'v str> {
    pod["metadata"]["annotations"][key].as_str()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}
