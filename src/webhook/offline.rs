//! `mutate`: the admission decision applied to manifests on disk, without a cluster.

use serde_json::Value;

use std::io::Read;
use std::path::PathBuf;

use super::decide::{Decision, decide};
use super::mutation::{Injection, Pod};
use crate::association::Index;
use crate::association::file::{self, FileError};
use crate::cli::MutateArgs;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Associations(#[from] FileError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("input is not YAML or JSON: {0}")]
    Parse(String),
    #[error("no Pod found in the input (expected a Pod manifest or an AdmissionReview for a Pod)")]
    NoPod,
    #[error("--patch needs exactly one Pod in the input, found {0}")]
    ManyPods(usize),
    #[error("document {index}: {message}")]
    BadPod { index: usize, message: String },
}

/// `mutate`: prints the mutated manifests (or the patch), and a summary line per pod on stderr.
pub fn command(args: MutateArgs) -> Result<(), OfflineError> {
    let index = file::load(&args.associations)?;
    let read = |path: &PathBuf| {
        let mut s = String::new();
        let result = if path.as_os_str() == "-" {
            std::io::stdin().read_to_string(&mut s)
        } else {
            std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s))
        };
        result.map(|_| s).map_err(|source| OfflineError::Read {
            path: path.clone(),
            source,
        })
    };
    let input = read(&args.input)?;
    let (out, reports) = run(
        &input,
        args.namespace.as_deref(),
        &index,
        &args.injection.injection(),
        args.patch,
    )?;
    for r in reports {
        eprintln!("{}/{}: {}", r.namespace, r.service_account, r.outcome);
    }
    print!("{out}");
    Ok(())
}

/// One pod's result, for the summary printed to stderr.
#[derive(Debug)]
pub struct Report {
    pub namespace: String,
    pub service_account: String,
    pub outcome: String,
}

/// The mutated manifests (YAML, documents separated by `---`), or with `patch_only` the JSON
/// Patch of the single pod, plus one report line per pod.
pub fn run(
    input: &str,
    namespace: Option<&str>,
    index: &Index,
    inj: &Injection,
    patch_only: bool,
) -> Result<(String, Vec<Report>), OfflineError> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(input) {
        let v = <Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| OfflineError::Parse(e.to_string()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    let pods = docs.iter().filter(|d| pod_of(d).is_some()).count();
    if pods == 0 {
        return Err(OfflineError::NoPod);
    }
    if patch_only && pods != 1 {
        return Err(OfflineError::ManyPods(pods));
    }
    let mut reports = Vec::new();
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let Some((pod_value, review_ns)) = pod_of(doc) else {
            out.push(doc.clone());
            continue;
        };
        let bytes = serde_json::to_vec(pod_value).map_err(|e| OfflineError::Parse(e.to_string()))?;
        let pod = Pod::from_slice(&bytes).map_err(|e| OfflineError::BadPod {
            index: i,
            message: e.to_string(),
        })?;
        let ns = namespace
            .or(review_ns)
            .or(pod.namespace())
            .unwrap_or("default")
            .to_owned();
        let decision = decide(&pod, &ns, index, inj, "");
        let (patch, outcome) = match decision {
            Decision::Inject {
                association,
                mutation,
            } => {
                let outcome = if mutation.patch.is_empty() {
                    format!("already injected (association {})", association.uid)
                } else {
                    format!(
                        "injected association {} ({})",
                        association.uid,
                        association.target()
                    )
                };
                let warnings: String = mutation
                    .warnings
                    .iter()
                    .map(|w| format!("; warning: {w}"))
                    .collect();
                (mutation.patch.to_json_patch(), outcome + &warnings)
            }
            Decision::NoAssociation => (Default::default(), "no association: unchanged".to_owned()),
            Decision::Skipped(skip) => (Default::default(), format!("{}: unchanged", skip.reason())),
        };
        reports.push(Report {
            namespace: ns,
            service_account: pod.service_account().to_owned(),
            outcome,
        });
        if patch_only {
            let text =
                serde_json::to_string_pretty(&patch).map_err(|e| OfflineError::Parse(e.to_string()))?;
            return Ok((text + "\n", reports));
        }
        let mut mutated = pod_value.clone();
        json_patch::patch(&mut mutated, &patch.0).map_err(|e| OfflineError::BadPod {
            index: i,
            message: format!("patch does not apply: {e}"),
        })?;
        out.push(mutated);
    }
    let mut text = String::new();
    for (i, doc) in out.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_yaml::to_string(doc).map_err(|e| OfflineError::Parse(e.to_string()))?);
    }
    Ok((text, reports))
}

/// The pod in a document, and the namespace an AdmissionReview names for it.
fn pod_of(doc: &Value) -> Option<(&Value, Option<&str>)> {
    match doc.get("kind").and_then(Value::as_str) {
        Some("Pod") => Some((doc, None)),
        Some("AdmissionReview") => {
            let req = doc.get("request")?;
            let object = req
                .get("object")
                .filter(|o| o.get("kind").and_then(Value::as_str) == Some("Pod"))?;
            Some((object, req.get("namespace").and_then(Value::as_str)))
        }
        _ => None,
    }
}
