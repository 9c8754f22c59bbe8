//! Reading manifests: a file or standard input, as YAML or JSON documents. `mutate`,
//! `explain` and the webhook's own selection (the shipped configuration) read through here.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{input}: not YAML or JSON: {message}")]
    Parse { input: String, message: String },
    #[error("{input}: holds no document (expected Pod manifests or an AdmissionReview)")]
    Empty { input: String },
}

/// The text of `path`, or of standard input for `-`.
pub(crate) fn read_input(path: &Path) -> Result<String, ManifestError> {
    let mut text = String::new();
    let result = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text))
    };
    result.map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text)
}

pub(crate) fn input_name(path: &Path) -> String {
    match path.as_os_str() == "-" {
        true => "<stdin>".to_owned(),
        false => path.display().to_string(),
    }
}

/// The text to mutate, and what to call it in messages (the file name, or `<stdin>`).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// The YAML or JSON documents of `input`, empty ones left out.
pub(crate) fn documents(input: &Input<'_>) -> Result<Vec<Value>, ManifestError> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(input.text) {
        // serde_yaml's positions are in the user's text: they point into the file.
        let v = <Value as serde::Deserialize>::deserialize(doc).map_err(|e| ManifestError::Parse {
            input: input.name.to_owned(),
            message: e.to_string(),
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}
