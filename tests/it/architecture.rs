//! The invariants `ARCHITECTURE.md` states, checked on the source: which module may import
//! which, and that modules import each other in no circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A file's text without its unit tests (which may import what the module itself may not).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let cut = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..cut].to_owned()
}

/// The top-level module a file belongs to (`store` for `src/store/redis/mod.rs`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The crate modules a piece of code names: `crate::x::…` and `crate::{x, y::…}`.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(group[..end].split(',').map(|part| ident(part.trim())).filter(|m| !m.is_empty()));
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Module → the other modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src()) {
        let Some(module) = module_of(&file) else { continue };
        let imports = crate_imports(&code(&file));
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(imports.into_iter().filter(|m| *m != module));
    }
    graph
}

#[test]
fn modules_import_each_other_in_no_circle() {
    let graph = graph();
    assert!(graph.len() > 10, "the module graph was not read: {graph:?}");
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let circle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert_eq!(circle, None, "modules import each other in a circle");
    }
}

#[test]
fn the_domain_knows_no_http_server_and_routes_know_no_backend() {
    let domain = ["postback", "clickid", "bots", "links", "model", "money", "store", "forward", "reports", "routing"];
    for file in sources(&src()) {
        let Some(module) = module_of(&file) else { continue };
        let code = code(&file);
        if domain.contains(&module.as_str()) {
            assert!(!code.contains("hyper::"), "{} imports hyper", file.display());
            assert!(!crate_imports(&code).contains("routes"), "{} imports the routes", file.display());
        }
        if module == "routes" {
            for backend in ["store::embedded", "store::redis", "EmbeddedStore", "RedisStore", "fjall", "redis::"] {
                assert!(!code.contains(backend), "{} names the backend {backend}", file.display());
            }
        }
        let relative = file.strip_prefix(src()).expect("under src").to_string_lossy().into_owned();
        // `store/mod.rs` opens the configured backend: the one place that names both.
        if relative == "store/mod.rs" {
            continue;
        }
        if !relative.starts_with("store/redis") {
            assert!(!code.contains("redis::"), "{relative} uses Redis; only the Redis backend may");
        }
        if !relative.starts_with("store/embedded") {
            assert!(!code.contains("fjall::"), "{relative} uses fjall; only the embedded backend may");
        }
    }
}
