//! ARCHITECTURE.md is checked against the code: its code map names every source file exactly
//! once, and no module imports a module at or above its own layer in the layering the page
//! states (which also rules out cycles). The compiler does not enforce the layering inside one
//! crate; this test does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<String> {
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    rel.sort();
    rel
}

/// The "Code map" section (other sections, such as the invariants, may name files again).
fn code_map(doc: &str) -> &str {
    let start = doc.find("## Code map").expect("a Code map section");
    let rest = &doc[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

#[test]
fn the_code_map_lists_every_source_file_once() {
    let full = architecture();
    let doc = code_map(&full);
    let files = all_sources();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut problems = Vec::new();
    for f in &files {
        let n = doc.matches(&format!("`{f}`")).count();
        if n != 1 {
            problems.push(format!("{f}: named {n} times"));
        }
    }
    // A path in the map that no longer exists is as wrong as a missing one.
    for (i, _) in doc.match_indices("`src/") {
        let rest = &doc[i + 1..];
        let end = rest.find('`').unwrap_or(rest.len());
        let path = &rest[..end];
        if path.ends_with(".rs") && !files.iter().any(|f| f == path) {
            problems.push(format!("{path}: in ARCHITECTURE.md but not in src/"));
        }
    }
    assert!(
        problems.is_empty(),
        "code map out of date:\n{}",
        problems.join("\n")
    );
}

/// The layers stated in ARCHITECTURE.md: lines `L<n>: `a`, `b`` in the "Layering" section.
fn layers(doc: &str) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for line in doc.lines() {
        let line = line.trim_start_matches("- ").trim();
        let Some(rest) = line.strip_prefix('L') else {
            continue;
        };
        let Some((n, mods)) = rest.split_once(':') else {
            continue;
        };
        let Ok(n) = n.trim().parse::<usize>() else {
            continue;
        };
        for m in mods.split('`').skip(1).step_by(2) {
            map.insert(m.to_string(), n);
        }
    }
    map
}

/// The top-level module a source file belongs to (`src/trainer/link.rs` -> `trainer`).
fn module_of(rel: &str) -> Option<String> {
    let inner = rel.strip_prefix("src/")?;
    let first = inner.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The top-level modules a file names as `crate::x`, outside comments.
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn no_module_imports_its_own_layer_or_one_above() {
    let layer = layers(&architecture());
    assert!(layer.len() > 10, "no layering found in ARCHITECTURE.md");
    let mut problems = Vec::new();
    for f in all_sources() {
        let Some(module) = module_of(&f) else {
            continue;
        };
        let Some(&own) = layer.get(&module) else {
            problems.push(format!("{f}: module `{module}` has no layer"));
            continue;
        };
        let text = std::fs::read_to_string(root().join(&f)).expect("source");
        for dep in imports(&text) {
            if dep == module {
                continue;
            }
            match layer.get(&dep) {
                Some(&l) if l < own => {}
                Some(&l) => {
                    problems.push(format!("{f}: `{module}` (L{own}) imports `{dep}` (L{l})"))
                }
                None => problems.push(format!("{f}: imports `{dep}`, which has no layer")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_actors_and_the_mixture_never_name_burn_or_the_model() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for f in all_sources() {
        if !(f.starts_with("src/actors/") || f.starts_with("src/mixture/")) {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(root().join(&f)).expect("source");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if line.contains("burn::") || line.contains("crate::model") {
                problems.push(format!("{f}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(checked >= 10, "only {checked} files checked");
    assert!(
        problems.is_empty(),
        "tensor code in an actor or the mixture:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_learner_seam_and_the_trainer_never_name_burn() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for f in all_sources() {
        let learner = f.starts_with("src/learner/");
        if !(learner || f.starts_with("src/trainer/")) {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(root().join(&f)).expect("source");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if line.contains("burn::") || (learner && line.contains("crate::model")) {
                problems.push(format!("{f}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(checked >= 15, "only {checked} files checked");
    assert!(
        problems.is_empty(),
        "the learner seam or the loop names burn (or the model):\n{}",
        problems.join("\n")
    );
}
