//! The source's layout, as `docs/design.md` describes it: three programs over a shared base
//! that never import each other, the command line assembled in `cli.rs` from each program's own
//! arguments, and no two files importing each other. Read from `src/` with the imports each file
//! writes (its code, not its comments or tests).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of `file` under `src` (`lib.rs` and `main.rs` are the root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut segs: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    if segs == ["lib"] || segs == ["main"] {
        segs.clear();
    }
    segs
}

/// The code of a file without its comments, its tests and its re-exports (a module naming its
/// own children's items is not an import), with `a::{b, c::d}` written out as `a::b a::c::d`.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let text = Regex::new(r"(?m)^\s*//.*$").unwrap().replace_all(text, "");
    let text = Regex::new(r"(?m)^\s*pub(\([a-z]+\))? use [^;]*;")
        .unwrap()
        .replace_all(&text, "");
    let braces = Regex::new(r"((?:crate|super|self)(?:::\w+)*)::\{([^{}]*)\}").unwrap();
    let mut text = text.into_owned();
    while braces.is_match(&text) {
        text = braces
            .replace_all(&text, |c: &regex::Captures| {
                c[2].split(',')
                    .map(|p| p.trim().split(" as ").next().unwrap_or_default())
                    .filter(|p| !p.is_empty())
                    .map(|p| match p {
                        "self" => c[1].to_owned(),
                        p => format!("{}::{p}", &c[1]),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .into_owned();
    }
    text
}

/// Which files each file imports from (by the paths it writes), by file.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| {
            let name = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (module_of(&src, f), name)
        })
        .collect();
    let path = Regex::new(r"\b(?:crate|super|self|[a-z_]+)(?:::\w+)+").unwrap();
    let mut graph = BTreeMap::new();
    for file in &files {
        let here = module_of(&src, file);
        let name = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let text = code(&std::fs::read_to_string(file).unwrap());
        let mut targets = BTreeSet::new();
        for m in path.find_iter(&text) {
            let segs: Vec<&str> = m.as_str().split("::").collect();
            let (mut base, rest) = match segs[0] {
                "crate" => (Vec::new(), &segs[1..]),
                "self" => (here.clone(), &segs[1..]),
                "super" => {
                    let ups = segs.iter().take_while(|s| **s == "super").count();
                    let keep = here.len().saturating_sub(ups);
                    (here[..keep].to_vec(), &segs[ups..])
                }
                // A child module of this one; anything else is a crate outside.
                child => {
                    let mut c = here.clone();
                    c.push(child.to_owned());
                    if !modules.contains_key(&c) {
                        continue;
                    }
                    (here.clone(), &segs[..])
                }
            };
            base.extend(rest.iter().map(|s| s.to_string()));
            // The longest prefix that is a file.
            let target = (0..=base.len()).rev().find_map(|i| modules.get(&base[..i]));
            if let Some(t) = target.filter(|t| **t != name) {
                targets.insert(t.clone());
            }
        }
        graph.insert(name, targets);
    }
    graph
}

#[test]
fn no_two_files_import_each_other() {
    let graph = imports();
    assert!(graph.len() > 50, "read the sources: {}", graph.len());
    let mut mutual = Vec::new();
    for (a, targets) in &graph {
        for b in targets.iter().filter(|b| a < *b && graph[*b].contains(a)) {
            mutual.push(format!("{a} <-> {b}"));
        }
    }
    assert!(mutual.is_empty(), "files importing each other: {mutual:#?}");
}

#[test]
fn the_programs_never_import_each_other_and_the_base_imports_none() {
    let programs = ["webhook", "agent", "exchange"];
    let program_of = |file: &str| programs.into_iter().find(|p| file.starts_with(&format!("{p}/")));
    let assembly = ["lib.rs", "main.rs", "cli.rs"];
    let mut wrong = Vec::new();
    for (file, targets) in imports() {
        for target in &targets {
            let (from, to) = (program_of(&file), program_of(target));
            let bad = match (from, to) {
                (Some(a), Some(b)) => a != b,
                (None, Some(_)) => !assembly.contains(&file.as_str()),
                _ => false,
            };
            // Only `main.rs` hands the command line to the programs.
            if bad || (target == "cli.rs" && file != "main.rs") {
                wrong.push(format!("{file} -> {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports across the layout: {wrong:#?}");
}

/// The check sees what it checks: a file that imports a program's item is caught.
#[test]
fn the_import_reader_resolves_paths_as_rust_does() {
    let text = code(
        "//! use crate::webhook::x;\nuse super::{a::B, c};\nuse crate::http::{self, Limits};\npub use d::E;\n#[cfg(test)]\nuse crate::agent::Z;",
    );
    assert!(
        text.contains("super::a::B") && text.contains("super::c"),
        "{text}"
    );
    assert!(
        text.contains("crate::http ") && text.contains("crate::http::Limits"),
        "{text}"
    );
    assert!(
        !text.contains("webhook") && !text.contains("d::E") && !text.contains("agent"),
        "{text}"
    );
}
