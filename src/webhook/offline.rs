//! `mutate`: the admission decision applied to manifests on disk, without a cluster.

use serde_json::Value;

use super::args::MutateArgs;
use super::decide::{Decision, decide};
use super::manifest::{Input, ManifestError, documents, input_name, read_input};
use super::mutation::{Injection, Mutation, Pod};
use crate::args::ArgError;
use crate::association::file::{self, FileError};
use crate::association::{Association, Index};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Associations(#[from] FileError),
    #[error(transparent)]
    Args(#[from] ArgError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// `explain` of a live pod: the cluster could not be read.
    #[error("reading the cluster: {0}")]
    Live(String),
    #[error("--patch needs exactly one Pod in the input, found {0}")]
    ManyPods(usize),
    #[error("{input}: document {number}{pod}: {message}")]
    BadPod {
        input: String,
        /// 1-based, as a reader counts the `---` documents.
        number: usize,
        /// ` (Pod "name")` when the document names its pod.
        pod: String,
        message: String,
    },
}

/// `mutate`: prints the mutated manifests (or the patch), and a summary line per pod on stderr.
pub fn command(args: MutateArgs) -> Result<(), OfflineError> {
    let index = file::load(&args.associations)?;
    let injection = args.injection.injection()?;
    let text = read_input(&args.input)?;
    let name = input_name(&args.input);
    let input = Input {
        name: &name,
        text: &text,
    };
    let (out, reports) = run(&input, args.namespace.as_deref(), &index, &injection, args.patch)?;
    for r in reports {
        eprintln!("{}: {}", r.subject, r.outcome);
    }
    print!("{out}");
    Ok(())
}

/// One pod's result (or the input's, when it holds none), for the summary printed to stderr.
#[derive(Debug)]
pub struct Report {
    /// `namespace/serviceAccount`, or the input's name.
    pub subject: String,
    pub outcome: String,
}

/// The mutated manifests (YAML, documents separated by `---`; other kinds unchanged), or with
/// `patch_only` the JSON Patch of the single pod, plus one report line per pod (or one saying
/// there was none).
pub fn run(
    input: &Input<'_>,
    namespace: Option<&str>,
    index: &Index,
    inj: &Injection,
    patch_only: bool,
) -> Result<(String, Vec<Report>), OfflineError> {
    let parse = |message: String| {
        OfflineError::from(ManifestError::Parse {
            input: input.name.to_owned(),
            message,
        })
    };
    let docs = documents(input)?;
    if docs.is_empty() {
        return Err(ManifestError::Empty {
            input: input.name.to_owned(),
        }
        .into());
    }
    let pods = docs.iter().filter(|d| pod_of(d).is_some()).count();
    if patch_only && pods != 1 {
        return Err(OfflineError::ManyPods(pods));
    }
    let mut reports = Vec::new();
    if pods == 0 {
        reports.push(Report {
            subject: input.name.to_owned(),
            outcome: format!("no Pod: {} document(s) passed through unchanged", docs.len()),
        });
    }
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let Some(found) = pod_of(doc) else {
            out.push(doc.clone());
            continue;
        };
        // Read straight from the parsed document (no re-encoding), tracking the field path
        // so an error names the field in the user's terms.
        let pod: Pod = serde_path_to_error::deserialize(found.pod).map_err(|e| {
            let name = found.pod.pointer("/metadata/name").and_then(Value::as_str);
            OfflineError::BadPod {
                input: input.name.to_owned(),
                number: i + 1,
                pod: name.map(|n| format!(" (Pod {n:?})")).unwrap_or_default(),
                message: match e.path().iter().next() {
                    Some(_) => format!("{}{}: {}", found.prefix, e.path(), e.inner()),
                    None => format!("{}: {}", found.prefix.trim_end_matches('.'), e.inner()),
                },
            }
        })?;
        let ns = namespace
            .or(found.namespace)
            .or(pod.namespace())
            .unwrap_or("default")
            .to_owned();
        let decision = decide(&pod, &ns, index, inj, found.request_uid);
        let (patch, outcome) = match decision {
            Decision::Inject {
                association,
                mutation,
            } => {
                let outcome = summary(&association, &mutation);
                (mutation.patch.to_json_patch(), outcome)
            }
            Decision::NoAssociation => (Default::default(), "no association: unchanged".to_owned()),
            Decision::Skipped(skip) => (Default::default(), format!("{}: unchanged", skip.reason())),
        };
        reports.push(Report {
            subject: format!("{ns}/{}", pod.service_account()),
            outcome,
        });
        if patch_only {
            let text = serde_json::to_string_pretty(&patch).map_err(|e| parse(e.to_string()))?;
            return Ok((text + "\n", reports));
        }
        let mut mutated = found.pod.clone();
        json_patch::patch(&mut mutated, &patch.0).map_err(|e| OfflineError::BadPod {
            input: input.name.to_owned(),
            number: i + 1,
            pod: String::new(),
            message: format!("patch does not apply: {e}"),
        })?;
        out.push(mutated);
    }
    let mut text = String::new();
    for (i, doc) in out.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_yaml::to_string(doc).map_err(|e| parse(e.to_string()))?);
    }
    Ok((text, reports))
}

/// What happened to a pod with an association, in words.
fn summary(association: &Association, mutation: &Mutation<'_>) -> String {
    let mut outcome = match (mutation.served, mutation.patch.is_empty()) {
        (0, _) => format!(
            "NOT injected: association {} ({}) applies, but no container can take it",
            association.uid,
            association.target()
        ),
        (_, true) => format!("already injected (association {})", association.uid),
        (n, false) => format!(
            "injected association {} ({}) into {n} container(s)",
            association.uid,
            association.target()
        ),
    };
    for w in &mutation.warnings {
        outcome.push_str("; warning: ");
        outcome.push_str(w);
    }
    outcome
}

/// A pod found in a document.
struct Found<'d> {
    pod: &'d Value,
    /// The namespace an AdmissionReview names for it.
    namespace: Option<&'d str>,
    /// The AdmissionReview's request uid, or empty.
    request_uid: &'d str,
    /// Where the pod sits in the document, for error paths (`request.object.`, or empty).
    prefix: &'static str,
}

fn pod_of(doc: &Value) -> Option<Found<'_>> {
    match doc.get("kind").and_then(Value::as_str) {
        Some("Pod") => Some(Found {
            pod: doc,
            namespace: None,
            request_uid: "",
            prefix: "",
        }),
        Some("AdmissionReview") => {
            let req = doc.get("request")?;
            let object = req
                .get("object")
                .filter(|o| o.get("kind").and_then(Value::as_str) == Some("Pod"))?;
            Some(Found {
                pod: object,
                namespace: req.get("namespace").and_then(Value::as_str),
                request_uid: req.get("uid").and_then(Value::as_str).unwrap_or(""),
                prefix: "request.object.",
            })
        }
        _ => None,
    }
}
