//! The layers of `src/` and the one rule of each (README, "Architecture"), checked from the
//! source: every `crate::` path of every file is an edge from the file's top-level module to
//! another. A forbidden edge or an import cycle between top-level modules fails the test with
//! the files that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges (`crate::x` paths) of each top-level module, with the files that make each.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// What each layer may import. Modules not listed may import anything, as long as no cycle
/// forms.
const ONLY: &[(&str, &[&str])] = &[
    // Pure: states, transitions, errors, upstream facts.
    ("domain", &[]),
    // SQL only.
    ("db", &["domain"]),
    // The upstream wire formats.
    ("clients", &["domain"]),
    ("crypto", &[]),
    // The public JSON, rendered from rows.
    ("api", &["domain", "db", "precheck"]),
    ("precheck", &["domain", "clients"]),
    ("metrics", &["domain", "db"]),
];

/// The edges call the core; no other module imports them but the roots.
const EDGES: &[&str] = &[
    "http",
    "dashboard",
    "client_page",
    "cli",
    "worker",
    "webhooks",
];

/// The composition roots wire the edges together: `app` (the service), `cli` (the commands,
/// which also prints `http`'s OpenAPI document) and the entry points.
const ROOTS: &[&str] = &["app", "cli", "main", "lib"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (line comments and doc comments).
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_block = 0usize;
    for line in text.lines() {
        let mut rest = line;
        let mut kept = String::new();
        loop {
            if in_block > 0 {
                match rest.find("*/") {
                    Some(i) => {
                        in_block -= 1;
                        rest = &rest[i + 2..];
                    }
                    None => break,
                }
            } else if let Some(i) = rest.find("/*").filter(|i| !rest[..*i].contains("//")) {
                kept.push_str(&rest[..i]);
                in_block += 1;
                rest = &rest[i + 2..];
            } else {
                let end = rest.find("//").unwrap_or(rest.len());
                kept.push_str(&rest[..end]);
                break;
            }
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a piece of code names through `crate::` (including grouped
/// `use crate::{a, b::c}`).
fn modules_named(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let preceded_by_ident = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        rest = &rest[i + "crate::".len()..];
        if preceded_by_ident {
            continue; // e.g. `waba_migrator::...` is not this pattern; `$crate::` is a macro's.
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            let mut depth = 1usize;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident_at(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            found.insert(name.to_owned());
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(trimmed);
            if !name.is_empty() {
                found.insert(name.to_owned());
            }
        }
    }
    found
}

fn graph() -> Graph {
    // `ARCHITECTURE_SRC` points the check at another tree (to see it fail on an old one).
    let src = std::env::var_os("ARCHITECTURE_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&src).ok()?;
            let first = rel.components().next()?.as_os_str().to_str()?;
            Some(first.trim_end_matches(".rs").to_owned())
        })
        .collect();
    let mut g = Graph::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a path")
            .trim_end_matches(".rs")
            .to_owned();
        if first == "bin" {
            continue; // separate crates: they use the library's public API
        }
        let text = std::fs::read_to_string(file).expect("read file");
        for to in modules_named(&without_comments(&text)) {
            if to != first && modules.contains(&to) {
                g.entry(first.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    g
}

fn describe(g: &Graph, from: &str, to: &str) -> String {
    let files: Vec<&str> = g[from][to].iter().map(String::as_str).collect();
    format!("{from} -> {to} (in {})", files.join(", "))
}

#[test]
fn each_layer_imports_only_what_its_rule_allows() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        for to in tos.keys() {
            let allowed = match ONLY.iter().find(|(m, _)| m == from) {
                Some((_, only)) => only.contains(&to.as_str()),
                None => true,
            };
            // Nothing but the roots imports an edge: not the layers below, not another edge.
            let edge_from_below = EDGES.contains(&to.as_str()) && !ROOTS.contains(&from.as_str());
            let root = to == "app" && !ROOTS.contains(&from.as_str());
            if !allowed || edge_from_below || root {
                wrong.push(describe(&g, from, to));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "forbidden imports:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn no_import_cycle_between_modules() {
    let g = graph();
    // A cycle exists iff some module reaches itself.
    let mut cycles = Vec::new();
    for start in g.keys() {
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in g.get(&node).map(|m| m.keys()).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(next.clone());
                    let edges: Vec<String> = cycle
                        .windows(2)
                        .map(|w| describe(&g, &w[0], &w[1]))
                        .collect();
                    cycles.push(edges.join("\n    "));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
        if !cycles.is_empty() {
            break;
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycle:\n    {}",
        cycles.join("\n")
    );
}

#[test]
fn the_reader_finds_grouped_and_nested_imports() {
    let code = "use crate::{db::{self, x}, domain,\n clients::Error};\nlet a = crate::metrics::f();\n// crate::http is a comment\nuse waba_crate::notme;";
    let found: Vec<String> = modules_named(&without_comments(code)).into_iter().collect();
    assert_eq!(found, ["clients", "db", "domain", "metrics"]);
}

/// The whole graph, for the README's picture: `cargo test --test architecture -- --nocapture print`.
#[test]
fn print_the_layers() {
    for (from, tos) in graph() {
        let tos: Vec<&str> = tos.keys().map(String::as_str).collect();
        println!("{from:>16} -> {}", tos.join(", "));
    }
}
