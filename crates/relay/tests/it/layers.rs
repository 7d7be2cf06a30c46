//! The module picture of docs/design.md, kept true: every `crate::` and
//! `super::` path in crates/relay/src is read, and the test fails when a
//! top-level module imports one above it in [`LAYERS`], or when any modules
//! that share a parent import each other in a cycle (at any depth: two
//! files of `gateway/`, two folders of `engine/`, ...).
//!
//! A module may always use its own ancestors (their re-exports are its
//! vocabulary) and its own descendants.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Top-level modules from the bottom up; each may import only modules of
/// an earlier line. Mirrors the list in crates/relay/src/lib.rs.
const LAYERS: &[&[&str]] = &[
    &["config", "tasks", "sparse"],
    &["telemetry", "events"],
    &["auth", "active_order", "outcome"],
    &["rooms"],
    &["metrics"],
    &["engine"],
    &["interest"],
    &["location", "delivery", "presence"],
    &["gateway"],
    &["stream"],
    &["http"],
    &["server"],
    &["cli"],
];

type Module = Vec<String>;

#[test]
fn modules_import_downward_only_and_never_in_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let known: BTreeSet<&Module> = modules.keys().collect();
    let mut edges: BTreeMap<Module, BTreeSet<(String, String)>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = fs::read_to_string(file).expect("read source");
        for target in references(module, &text) {
            let Some(target) = resolve(&target, &known) else {
                continue;
            };
            if let Some((parent, from, to)) = sibling_edge(module, &target) {
                edges.entry(parent).or_default().insert((from, to));
            }
        }
    }

    let mut problems = Vec::new();
    let top = edges.get(&Vec::new()).cloned().unwrap_or_default();
    let layer_of = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    for module in modules.keys().filter(|m| m.len() == 1) {
        if layer_of(&module[0]).is_none() && !["lib", "main"].contains(&module[0].as_str()) {
            problems.push(format!(
                "{} is in no layer: add it to LAYERS here, in lib.rs and in docs/design.md",
                module[0]
            ));
        }
    }
    for (from, to) in &top {
        if let (Some(a), Some(b)) = (layer_of(from), layer_of(to))
            && b >= a
        {
            problems.push(format!("{from} imports {to}, which is not below it"));
        }
    }
    for (parent, pairs) in &edges {
        if let Some(cycle) = find_cycle(pairs) {
            let at = if parent.is_empty() {
                "crate".to_owned()
            } else {
                parent.join("::")
            };
            problems.push(format!("cycle in {at}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        problems.is_empty(),
        "module layering broken:\n  {}",
        problems.join("\n  ")
    );
}

/// Every module of the crate and its file: `engine/redis/mod.rs` is
/// `["engine", "redis"]`, `lib.rs` is `["lib"]`.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).expect("under src");
                let mut parts: Module = rel
                    .with_extension("")
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    out
}

/// The absolute module paths a file names: `use crate::...` trees,
/// `super::` and `self::` paths, and `crate::a::b` inside code.
fn references(module: &Module, text: &str) -> Vec<Module> {
    // For `foo.rs` and `foo/mod.rs` alike, `self` is `foo`.
    let here: Module = if module == &["lib".to_owned()] {
        Vec::new()
    } else {
        module.clone()
    };
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for path in paths(&code) {
        let mut segments = path.split("::").map(str::trim).filter(|s| !s.is_empty());
        let mut base = match segments.next() {
            Some("crate") => Vec::new(),
            Some("self") => here.clone(),
            Some("super") => here[..here.len().saturating_sub(1)].to_vec(),
            _ => continue,
        };
        let mut rest: Vec<&str> = segments.collect();
        while rest.first() == Some(&"super") {
            base.pop();
            rest.remove(0);
        }
        base.extend(rest.iter().map(|s| (*s).to_owned()));
        out.push(base);
    }
    out
}

/// Paths starting with `crate`, `self` or `super`, with `use` trees
/// (`a::{b, c::{d}}`) expanded into one path each.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &code[i..];
        let root = ["crate::", "self::", "super::"]
            .into_iter()
            .find(|r| rest.starts_with(r));
        match root {
            Some(_) if word_start => {
                let end = path_end(rest);
                expand("", &rest[..end], &mut out);
                i += end.max(1);
            }
            _ => i += 1,
        }
    }
    out
}

/// Where a path (with its braces) ends.
fn path_end(s: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => return i,
            _ => {}
        }
    }
    s.len()
}

fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        out.push(format!("{prefix}{path}"));
        return;
    };
    let head = &tree[..open];
    let inner = tree[open + 1..].trim_end().trim_end_matches('}');
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                expand(&format!("{prefix}{head}"), &inner[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        expand(&format!("{prefix}{head}"), &inner[start..], out);
    }
}

/// The longest prefix of `path` that is a module (items are dropped).
fn resolve(path: &Module, known: &BTreeSet<&Module>) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| m.is_empty() || known.contains(m))
}

/// The edge `from -> to` between the children of the modules' common
/// parent, or `None` when one contains the other.
fn sibling_edge(from: &Module, to: &Module) -> Option<(Module, String, String)> {
    let from: &[String] = if from == &["lib".to_owned()] {
        &[]
    } else {
        from
    };
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((
        from[..common].to_vec(),
        from[common].clone(),
        to[common].clone(),
    ))
}

/// One cycle of the graph, if it has any.
fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    // 0 unvisited, 1 on the current path, 2 done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(node, 1);
        path.push(node);
        for &n in next.get(node).into_iter().flatten() {
            match state.get(n).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| *p == n).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[at..].iter().map(|s| (*s).to_owned()).collect();
                    cycle.push(n.to_owned());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(n, next, state, path) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    let nodes: Vec<&str> = next.keys().copied().collect();
    for node in nodes {
        if state.get(node).copied().unwrap_or(0) == 0
            && let Some(cycle) = visit(node, &next, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_checker_sees_trees_super_paths_and_cycles() {
    let module: Module = vec!["gateway".into(), "connection".into()];
    let refs = references(
        &module,
        "use super::{GatewayState, budget::EventBudget};\n\
         use crate::{engine::{Engine, redis::X}, metrics};\n\
         // use crate::stream;\n\
         fn f() { crate::events::now_ms(); }",
    );
    let refs: Vec<String> = refs.iter().map(|m| m.join("::")).collect();
    assert_eq!(
        refs,
        [
            "gateway::GatewayState",
            "gateway::budget::EventBudget",
            "engine::Engine",
            "engine::redis::X",
            "metrics",
            "events::now_ms"
        ]
    );
    let edges: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        sibling_edge(&module, &vec!["gateway".into(), "budget".into()]),
        Some((vec!["gateway".into()], "connection".into(), "budget".into()))
    );
    assert_eq!(sibling_edge(&module, &vec!["gateway".into()]), None);
}
