//! The standalone association source: a YAML or JSON file, watched and reloaded.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::index::{Duplicate, Index, Writer};
use super::{Association, AssociationSpec};
use crate::file_watch::{Fingerprint, Watcher};
use crate::metrics::{InputMetrics, Source};

/// Why an association file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is empty (or holds only null); write `associations: []` to remove every association")]
    Empty { path: PathBuf },
    #[error("{path} is not a regular file; point --associations at a file")]
    NotAFile { path: PathBuf },
    #[error(
        "{path} is larger than {limit_mib} MiB; split the set or store it as PodIdentityAssociation objects"
    )]
    TooLarge { path: PathBuf, limit_mib: u64 },
    #[error("{path} is not a valid association file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} has invalid associations:\n  {}", .problems.join("\n  "))]
    Invalid { path: PathBuf, problems: Vec<String> },
    #[error("{path}: {source}")]
    Duplicate { path: PathBuf, source: Duplicate },
}

/// What a file yields: the valid associations and a line for each invalid one.
#[derive(Default)]
struct Records {
    valid: Vec<Association>,
    problems: Vec<String>,
}

/// Reads the top level (`associations: [...]` or a bare list), validating each entry as soon
/// as it is parsed: the parse buffers of one entry are freed before the next is read, so a
/// large file does not leave its garbage interleaved with the kept records.
#[derive(Clone, Copy)]
struct RecordsSeed {
    /// Keep only what the live index needs ([`Association::into_indexed`]).
    indexed: bool,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed {
    type Value = Records;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Records, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed {
    type Value = Records;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of associations, or a map with an `associations` list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Records, A::Error> {
        let mut out = Records {
            valid: Vec::with_capacity(seq.size_hint().unwrap_or(0)),
            problems: Vec::new(),
        };
        let mut i = 0;
        while let Some(spec) = seq.next_element::<AssociationSpec>()? {
            let name = format!("associations[{i}] ({}/{})", spec.namespace, spec.service_account);
            match spec.validate() {
                Ok(mut a) => {
                    // serde grows the list to capacity 4 for one or two tags; across a large
                    // set that slack is megabytes held for the life of the index.
                    a.tags.shrink_to_fit();
                    out.valid.push(if self.indexed { a.into_indexed() } else { a });
                }
                Err(e) => out.problems.push(format!("{name}: {e}")),
            }
            i += 1;
        }
        Ok(out)
    }
    // A null where the list belongs is what a half-written or truncated file reads as; taking
    // it for "no associations" would revoke every one of them.
    fn visit_unit<E: de::Error>(self) -> Result<Records, E> {
        Err(E::custom(NULL_LIST))
    }
    fn visit_none<E: de::Error>(self) -> Result<Records, E> {
        Err(E::custom(NULL_LIST))
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Records, M::Error> {
        let mut out = None;
        while let Some(key) = m.next_key::<String>()? {
            match key.as_str() {
                "associations" => out = Some(m.next_value_seed(self)?),
                other => return Err(de::Error::unknown_field(other, &["associations"])),
            }
        }
        out.ok_or_else(|| de::Error::missing_field("associations"))
    }
}

const NULL_LIST: &str =
    "null where the list of associations belongs; write `associations: []` to remove every association";

/// Largest association file read (100 000 associations take about 30 MiB as JSON).
pub(crate) const MAX_FILE: u64 = 64 * 1024 * 1024;

/// Parses and validates the text of an association file.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Association>, FileError> {
    parse_with(path, text, RecordsSeed { indexed: false })
}

fn parse_with(path: &Path, text: &str, seed: RecordsSeed) -> Result<Vec<Association>, FileError> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(FileError::Empty { path: path.into() });
    }
    // JSON goes through serde_json: far faster than YAML on large files.
    let records: Result<Records, String> = if trimmed.starts_with(['{', '[']) {
        let mut de = serde_json::Deserializer::from_str(text);
        seed.deserialize(&mut de)
            .and_then(|r| de.end().map(|()| r))
            .map_err(|e| e.to_string())
    } else {
        seed.deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| e.to_string())
    };
    let records = records.map_err(|message| FileError::Parse {
        path: path.into(),
        message,
    })?;
    if records.problems.is_empty() {
        Ok(records.valid)
    } else {
        Err(FileError::Invalid {
            path: path.into(),
            problems: records.problems,
        })
    }
}

/// Reads, validates and indexes an association file.
pub fn load(path: &Path) -> Result<Index, FileError> {
    let text = read_bounded(path)?;
    let list = parse_with(path, &text, RecordsSeed { indexed: true })?;
    drop(text);
    Index::build(list).map_err(|source| FileError::Duplicate {
        path: path.into(),
        source,
    })
}

/// The text of `path`: a regular file (a FIFO or device would block or never end) of at most
/// [`MAX_FILE`] bytes.
fn read_bounded(path: &Path) -> Result<String, FileError> {
    use std::io::Read;
    let read_err = |source| FileError::Read {
        path: path.into(),
        source,
    };
    if !std::fs::metadata(path).map_err(read_err)?.is_file() {
        return Err(FileError::NotAFile { path: path.into() });
    }
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE {
        return Err(FileError::TooLarge {
            path: path.into(),
            limit_mib: MAX_FILE >> 20,
        });
    }
    Ok(text)
}

/// A loaded file kept in sync with the store until dropped.
pub(crate) struct FileSource {
    _watcher: Watcher,
}

impl FileSource {
    /// Loads `path` into `store` (an error here is fatal: there is no last good set yet), then
    /// reloads it on every change; a bad edit is logged and counted and the last good set stays.
    pub(crate) fn start(
        path: PathBuf,
        writer: Writer,
        metrics: Arc<InputMetrics>,
        interval: Duration,
    ) -> Result<Self, FileError> {
        let paths = vec![path.clone()];
        let initial = Fingerprint::of(&paths);
        let index = load(&path)?;
        tracing::info!(file = %path.display(), associations = index.len(), "associations loaded");
        metrics.set_associations(index.len());
        writer.replace(index);
        writer.mark_synced();
        let watcher = Watcher::spawn("associations", paths, initial, interval, move || {
            match load(&path) {
                Ok(index) => {
                    tracing::info!(file = %path.display(), associations = index.len(), "associations reloaded");
                    metrics.set_associations(index.len());
                    metrics.reload(Source::Associations, true);
                    writer.replace(index);
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
    fn the_token_lifetime_is_read_and_checked() {
        let text = "- {namespace: a, serviceAccount: b, agencyName: c, tokenExpirationSeconds: 3600}\n";
        assert_eq!(parse(&p(), text).unwrap()[0].token_expiration_seconds, Some(3600));
        let text = "- {namespace: a, serviceAccount: b, agencyName: c, tokenExpirationSeconds: 0}\n";
        let err = parse(&p(), text).unwrap_err().to_string();
        assert!(
            err.contains("associations[0] (a/b): tokenExpirationSeconds 0 must be between 600 (10 minutes) and 172800 (48 hours)"),
            "{err}"
        );
        let text = "- {namespace: a, serviceAccount: b, agencyName: c, tokenExpirationSeconds: 1h}\n";
        assert!(parse(&p(), text).is_err());
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
    fn the_index_keeps_only_what_it_reads_and_the_list_forms_agree() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, FIXTURE).unwrap();
        let index = load(&f).unwrap();
        let a = index.get("pi-demo", "app").unwrap();
        assert_eq!(
            (a.uid.as_str(), a.target()),
            ("81f143f5-f469-4fb6-b17c-8f52af73184c", "demo-agency")
        );
        assert!(a.tags.is_empty() && a.created_at.is_none() && a.cluster_id.is_none());
        // parse() keeps the whole record.
        assert_eq!(parse(&p(), FIXTURE).unwrap()[0].tags.len(), 2);
        for null in [
            "associations: null",
            "associations:\n",
            "~",
            "---\n",
            "null",
            "{\"associations\": null}",
        ] {
            let err = parse(&p(), null).unwrap_err().to_string();
            assert!(err.contains("associations: []"), "{null:?}: {err}");
        }
        assert!(matches!(parse(&p(), "[] trailing"), Err(FileError::Parse { .. })));
        assert!(matches!(
            parse(&p(), "{\"associations\": 5}"),
            Err(FileError::Parse { .. })
        ));
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, FileError::NotAFile { .. }), "{err}");
        let fifo = dir.path().join("fifo");
        let ok = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(ok.success());
        // Opening a FIFO with no writer would block for ever: it is refused before that.
        let err = load(&fifo).unwrap_err();
        assert!(err.to_string().contains("is not a regular file"), "{err}");
        let big = dir.path().join("big.json");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_FILE + 1).unwrap();
        let err = load(&big).unwrap_err();
        assert!(err.to_string().contains("larger than 64 MiB"), "{err}");
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
