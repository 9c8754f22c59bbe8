//! The standalone association source: a YAML or JSON file, watched and reloaded.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::index::{Duplicate, Index, Store};
use super::{Association, AssociationSpec};
use crate::metrics::{Metrics, Source};
use crate::watch::{Fingerprint, Watcher};

/// Why an association file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is empty; write `associations: []` to remove every association")]
    Empty { path: PathBuf },
    #[error("{path} is not a valid association file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} has invalid associations:\n  {}", .problems.join("\n  "))]
    Invalid { path: PathBuf, problems: Vec<String> },
    #[error("{path}: {source}")]
    Duplicate { path: PathBuf, source: Duplicate },
}

/// The top level of the file: `associations: [...]` or a bare list.
struct Document(Vec<AssociationSpec>);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Document;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of associations, or a map with an `associations` list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(a) = seq.next_element()? {
                    out.push(a);
                }
                Ok(Document(out))
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Document, M::Error> {
                let mut out = None;
                while let Some(key) = m.next_key::<String>()? {
                    match key.as_str() {
                        "associations" => {
                            out = Some(
                                m.next_value::<Option<Vec<AssociationSpec>>>()?
                                    .unwrap_or_default(),
                            )
                        }
                        other => {
                            return Err(de::Error::unknown_field(other, &["associations"]));
                        }
                    }
                }
                out.map(Document)
                    .ok_or_else(|| de::Error::missing_field("associations"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses and validates the text of an association file.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Association>, FileError> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(FileError::Empty { path: path.into() });
    }
    // JSON goes through serde_json: far faster than YAML on large files.
    let doc: Result<Document, String> = if trimmed.starts_with(['{', '[']) {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    };
    let doc = doc.map_err(|message| FileError::Parse {
        path: path.into(),
        message,
    })?;
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(doc.0.len());
    for (i, spec) in doc.0.into_iter().enumerate() {
        let name = format!("associations[{i}] ({}/{})", spec.namespace, spec.service_account);
        match spec.validate() {
            Ok(mut a) => {
                // serde grows the list to capacity 4 for one or two tags; across a large set
                // that slack is megabytes held for the life of the index.
                a.tags.shrink_to_fit();
                out.push(a)
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(FileError::Invalid {
            path: path.into(),
            problems,
        })
    }
}

/// Reads, validates and indexes an association file.
pub fn load(path: &Path) -> Result<Index, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    let list = parse(path, &text)?;
    Index::build(list).map_err(|source| FileError::Duplicate {
        path: path.into(),
        source,
    })
}

/// A loaded file kept in sync with the store until dropped.
pub struct FileSource {
    _watcher: Watcher,
}

impl FileSource {
    /// Loads `path` into `store` (an error here is fatal: there is no last good set yet), then
    /// reloads it on every change; a bad edit is logged and counted and the last good set stays.
    pub fn start(
        path: PathBuf,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        interval: Duration,
    ) -> Result<Self, FileError> {
        let paths = vec![path.clone()];
        let initial = Fingerprint::of(&paths);
        let index = load(&path)?;
        tracing::info!(file = %path.display(), associations = index.len(), "associations loaded");
        metrics.set_associations(index.len());
        store.replace(index);
        let watcher = Watcher::spawn("associations", paths, initial, interval, move || {
            match load(&path) {
                Ok(index) => {
                    tracing::info!(file = %path.display(), associations = index.len(), "associations reloaded");
                    metrics.set_associations(index.len());
                    metrics.reload(Source::Associations, true);
                    store.replace(index);
                }
                Err(e) => {
                    tracing::error!(error = %e, "association file reload refused; the last good set keeps serving");
                    metrics.reload(Source::Associations, false);
                }
            }
        })
        .map_err(|source| FileError::Read { path: PathBuf::from("<watcher thread>"), source })?;
        Ok(FileSource { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../examples/associations.yaml");

    fn p() -> PathBuf {
        PathBuf::from("a.yaml")
    }

    #[test]
    fn wrapped_bare_yaml_and_json_all_parse() {
        assert_eq!(parse(&p(), FIXTURE).unwrap().len(), 2);
        let bare = "- {namespace: a, serviceAccount: b, agencyName: c}\n";
        assert_eq!(parse(&p(), bare).unwrap()[0].target(), "c");
        let json =
            r#"{"associations":[{"namespace":"a","serviceAccount":"b","roleArn":"arn:aws:iam::1:role/r"}]}"#;
        assert_eq!(parse(&p(), json).unwrap()[0].target(), "arn:aws:iam::1:role/r");
        assert_eq!(parse(&p(), "associations: []").unwrap().len(), 0);
        assert_eq!(parse(&p(), "[]").unwrap().len(), 0);
    }

    #[test]
    fn errors_name_the_entry() {
        let text = "associations:\n- {namespace: ok, serviceAccount: a, agencyName: x}\n- {namespace: ok, serviceAccount: b, tags: [{key: _sys_k, value: v}]}\n";
        let err = parse(&p(), text).unwrap_err().to_string();
        assert!(err.contains("associations[1] (ok/b)"), "{err}");
        assert!(err.contains("agencyName (or roleArn) is required"), "{err}");
        assert!(err.contains("_sys_"), "{err}");
        assert!(!err.contains("associations[0]"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_shapes_are_parse_errors() {
        let err = parse(&p(), "- {namespace: a, serviceaccount: b, agencyName: c}").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `serviceaccount`"),
            "{err}"
        );
        let err = parse(&p(), "assocs: []").unwrap_err();
        assert!(err.to_string().contains("unknown field `assocs`"), "{err}");
        assert!(matches!(parse(&p(), "  \n"), Err(FileError::Empty { .. })));
        assert!(matches!(parse(&p(), "{not json"), Err(FileError::Parse { .. })));
    }

    #[test]
    fn duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, "- {namespace: a, serviceAccount: b, agencyName: c}\n- {namespace: a, serviceAccount: b, agencyName: d}\n").unwrap();
        let err = load(&f).unwrap_err();
        assert!(matches!(err, FileError::Duplicate { .. }), "{err}");
    }
}
