//! The layout rules of `docs/architecture.md` ("Layers"), checked on `src/` as text: no import
//! circle between files, no import against the layer table (read from the document itself, so
//! that the two cannot drift apart), and no two types of one name. Reads files only: no
//! database, no build of anything but this file.
//!
//! An import is any path written `crate::...`, `super::...` or `self::...` (in a `use` or in
//! the code), resolved to the file of the longest module it names. A folder's `mod.rs` may use
//! its own files (it fronts them) and they may use it: an edge to a file's own descendant is
//! not counted. Test code is left out: `#[cfg(test)] mod name { ... }` blocks and the files of
//! `#[cfg(test)] mod name;`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

struct SourceFile {
    module: Module,
    rel: String,
    /// The code without comments, literals and test modules.
    code: String,
}

/// The manifest directory at run time (so that the test can be pointed at another tree).
fn root() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// Every `.rs` file under `src/` but the binary's `main.rs` and test-only files.
fn source_files(root: &Path) -> Vec<SourceFile> {
    let src = root.join("src");
    let mut paths = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut test_only: BTreeSet<Module> = BTreeSet::new();
    for path in paths {
        let rel = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "main.rs" {
            continue;
        }
        let mut module: Module = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_string)
            .collect();
        if module.last().is_some_and(|l| l == "mod" || l == "lib") {
            module.pop();
        }
        let text = std::fs::read_to_string(&path).expect("read a source file");
        let (code, test_children) = without_tests(&strip(&text));
        for child in test_children {
            let mut m = module.clone();
            m.push(child);
            test_only.insert(m);
        }
        files.push(SourceFile { module, rel, code });
    }
    files.retain(|f| !test_only.iter().any(|t| f.module.starts_with(t)));
    files
}

/// `text` without comments, string and character literals (their insides could look like
/// paths or braces).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            'r' if (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
                && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_')) =>
            {
                // A raw string: r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' => {
                // A character literal ('x', '\n', '\u{1f}'), or a lifetime ('a), kept.
                let close = if c.get(i + 1) == Some(&'\\') {
                    (i + 2..c.len().min(i + 12)).find(|&j| c[j] == '\'')
                } else if c.get(i + 2) == Some(&'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match close {
                    Some(j) => {
                        out.push_str("' '");
                        i = j + 1;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// `code` without its `#[cfg(test)] mod name { ... }` blocks; and the names of the test-only
/// files it declares (`#[cfg(test)] mod name;`).
fn without_tests(code: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut children = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        let Some(decl) = after.strip_prefix("mod ") else {
            rest = &rest[at + "#[cfg(test)]".len()..];
            continue;
        };
        let name: String = decl
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let tail = decl.trim_start()[name.len()..].trim_start();
        if let Some(semi) = tail.strip_prefix(';') {
            children.push(name);
            rest = semi;
        } else if tail.starts_with('{') {
            let mut depth = 0;
            let mut end = tail.len();
            for (k, ch) in tail.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &tail[end..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    (out, children)
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths of `use` items, their trees expanded.
fn use_paths(code: &str) -> Vec<Vec<String>> {
    fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let mut items = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (k, ch) in tree.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&tree[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        items.push(&tree[start..]);
        for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
            match item.find('{') {
                Some(open) => {
                    let mut p = prefix.to_vec();
                    p.extend(segments(&item[..open]));
                    expand(&p, &item[open + 1..item.len() - 1], out);
                }
                None => {
                    let item = item.split(" as ").next().unwrap_or(item);
                    let mut p = prefix.to_vec();
                    p.extend(segments(item));
                    out.push(p);
                }
            }
        }
    }
    fn segments(s: &str) -> Vec<String> {
        s.split("::")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    }
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + 4..];
        if before.is_some_and(is_ident) {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        expand(&[], &rest[..end], &mut out);
        rest = &rest[end..];
    }
    out
}

/// The paths written in the code: `crate::a::b`, `super::x`, `self::y`.
fn code_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if code[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let path: String = code[at..]
                .chars()
                .take_while(|c| is_ident(*c) || *c == ':')
                .collect();
            let path: Vec<String> = path
                .split("::")
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            // `super::{a, b}` is a `use` tree: [`use_paths`] reads it.
            if path.len() > 1 {
                out.push(path);
            }
        }
    }
    out
}

/// `path`, written in the file of `module`, as a path from the crate's root (`None`: not a
/// path of this crate).
fn absolute(module: &Module, path: &[String]) -> Option<Module> {
    let (mut base, mut rest) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "super" | "self" => (module.clone(), path),
        _ => return None,
    };
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Imports between files: (from, to) -> one path written for it.
fn imports(files: &[SourceFile]) -> BTreeMap<(String, String), String> {
    let by_module: BTreeMap<&Module, &SourceFile> = files.iter().map(|f| (&f.module, f)).collect();
    let mut edges = BTreeMap::new();
    for f in files {
        let mut paths = use_paths(&f.code);
        paths.extend(code_paths(&f.code));
        for path in paths {
            let Some(abs) = absolute(&f.module, &path) else {
                continue;
            };
            let Some(to) = (0..=abs.len())
                .rev()
                .find_map(|n| by_module.get(&abs[..n].to_vec()))
            else {
                continue;
            };
            // Itself, or a file of its own (a `mod.rs` fronts its folder).
            if to.module.starts_with(&f.module) {
                continue;
            }
            edges
                .entry((f.rel.clone(), to.rel.clone()))
                .or_insert_with(|| path.join("::"));
        }
    }
    edges
}

/// The layer of each top-level module, from the table of `docs/architecture.md`'s "Layers".
fn layer_table(root: &Path) -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("read the doc");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("docs/architecture.md has a `## Layers` section");
    let mut layers = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(n) = cells[1].parse::<u32>() else {
            continue;
        };
        for name in cells[3].split('`').skip(1).step_by(2) {
            let top = name.trim_end_matches('/').trim_end_matches(".rs");
            assert!(
                layers.insert(top.to_string(), n).is_none(),
                "{top} is in two layers of docs/architecture.md"
            );
        }
    }
    assert!(!layers.is_empty(), "no layer table in docs/architecture.md");
    layers
}

fn top(rel: &str) -> &str {
    rel.split('/').next().unwrap().trim_end_matches(".rs")
}

#[test]
fn no_import_circle_between_files_of_src() {
    let edges = imports(&source_files(&root()));
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
    }
    // Every circle is found from one of its files: a depth-first walk back to the start.
    let mut circles: BTreeSet<Vec<&str>> = BTreeSet::new();
    for &start in graph.keys() {
        let mut stack = vec![(start, vec![start])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for &next in graph.get(at).into_iter().flatten() {
                if next == start {
                    let mut circle = path.clone();
                    // One spelling per circle: from its smallest file.
                    let min = (0..circle.len()).min_by_key(|&k| circle[k]).unwrap();
                    circle.rotate_left(min);
                    circles.insert(circle);
                } else if seen.insert(next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
    let described: Vec<String> = circles
        .iter()
        .map(|c| {
            let mut hops: Vec<String> = Vec::new();
            for (k, from) in c.iter().enumerate() {
                let to = c[(k + 1) % c.len()];
                let via = &edges[&(from.to_string(), to.to_string())];
                hops.push(format!("{from} -> {to} ({via})"));
            }
            hops.join(", ")
        })
        .collect();
    assert!(
        described.is_empty(),
        "import circles between files of src/:\n{}",
        described.join("\n")
    );
}

#[test]
fn no_import_against_the_layer_order_of_docs_architecture() {
    let root = root();
    let layers = layer_table(&root);
    let files = source_files(&root);
    let mut problems: Vec<String> = files
        .iter()
        .filter(|f| f.rel != "lib.rs" && !layers.contains_key(top(&f.rel)))
        .map(|f| {
            format!(
                "src/{} is in no layer of docs/architecture.md's table",
                f.rel
            )
        })
        .collect();
    for ((from, to), via) in imports(&files) {
        let (a, b) = (top(&from), top(&to));
        if a == b || from == "lib.rs" {
            continue;
        }
        let (Some(la), Some(lb)) = (layers.get(a), layers.get(b)) else {
            continue;
        };
        if lb <= la {
            problems.push(format!(
                "src/{from} (layer {la}, {a}) imports src/{to} (layer {lb}, {b}): {via}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the layers of docs/architecture.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn each_type_name_of_src_means_one_thing() {
    let mut defined: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in source_files(&root()) {
        for line in f.code.lines() {
            // Items, not associated types (those are indented in their impl).
            let item = line
                .strip_prefix("pub ")
                .or_else(|| {
                    line.strip_prefix("pub(")
                        .and_then(|l| l.split_once(") ").map(|(_, r)| r))
                })
                .unwrap_or(line);
            let mut words = item.split_whitespace();
            let (Some(kind), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            if !["struct", "enum", "trait", "type", "union"].contains(&kind) {
                continue;
            }
            let name: String = name.chars().take_while(|c| is_ident(*c)).collect();
            if line.starts_with(char::is_whitespace) && kind == "type" {
                continue;
            }
            defined
                .entry(name)
                .or_default()
                .push(format!("src/{}", f.rel));
        }
    }
    let twice: Vec<String> = defined
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(name, at)| format!("{name}: {}", at.join(", ")))
        .collect();
    assert!(
        twice.is_empty(),
        "type names defined more than once in src/:\n{}",
        twice.join("\n")
    );
}

#[test]
fn the_reader_sees_what_the_code_imports() {
    // The parts the checks rest on: a `use` tree, paths in code, comments and strings left
    // out, test modules left out.
    let code = strip(
        "use super::{a::B, c};\nuse crate::x::{self, y::{Z as W}};\n\
         // crate::commented::Out\nlet s = \"crate::quoted::Out\"; let c = '\"';\n\
         fn f() { crate::called::f(); }\n#[cfg(test)]\nmod tests { use crate::tested::T; }\n\
         #[cfg(test)]\nmod more;\n",
    );
    let (code, test_files) = without_tests(&code);
    assert_eq!(test_files, ["more"]);
    let mut paths: Vec<String> = use_paths(&code)
        .into_iter()
        .chain(code_paths(&code))
        .map(|p| p.join("::"))
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(
        paths,
        [
            "crate::called::f",
            "crate::x",
            "crate::x::self",
            "crate::x::y::Z",
            "super::a::B",
            "super::c",
        ]
    );
    let m: Module = vec!["replica".into(), "apply".into(), "stream".into()];
    let up = |p: &str| absolute(&m, &p.split("::").map(str::to_string).collect::<Vec<_>>());
    assert_eq!(
        up("super::super::url::PgEndpoint").unwrap(),
        ["replica", "url", "PgEndpoint"]
    );
    assert_eq!(up("crate::dump::feed").unwrap(), ["dump", "feed"]);
    assert!(up("tokio::io").is_none());
}
