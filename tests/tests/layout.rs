//! The shape of the repository, as `docs/architecture.md` promises it: no
//! product source file a reader cannot hold in their head, no circle of
//! imports among a crate's files, a README that is a front door whose links
//! (and the docs') all lead somewhere, and nothing generated in git.
//!
//! The import graph is read from the sources with a small scanner (no
//! compiler): `use` trees and paths written out in code (`crate::a::b`,
//! `super::x`, `child::f`), resolved to the file that defines the module
//! they name. Test modules (`#[cfg(test)] mod tests { .. }`) are left out,
//! as `cargo modules dependencies` leaves them out by default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest product source file, in lines (the style guide's "a file a
/// reader cannot hold in their head is two files").
const MAX_LINES: usize = 800;
/// Longest README (a front door: the guides live in `docs/`).
const README_MAX_LINES: usize = 400;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, into);
        } else if p.extension().is_some_and(|x| x == "rs") {
            into.push(p);
        }
    }
}

/// Every crate's `src/` that ships: the CLI, the shared crates, the functions.
fn product_crates() -> Vec<PathBuf> {
    let r = root();
    let mut crates = vec![r.join("cli/src")];
    for parent in ["shared", "functions"] {
        let mut dirs: Vec<_> = std::fs::read_dir(r.join(parent))
            .unwrap()
            .flatten()
            .map(|e| e.path().join("src"))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        crates.extend(dirs);
    }
    crates
}

#[test]
fn no_product_source_file_is_longer_than_a_reader_can_hold() {
    let mut long = Vec::new();
    let mut seen = 0;
    for src in product_crates() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            seen += 1;
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > MAX_LINES {
                long.push(format!(
                    "{} ({n} lines)",
                    f.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        seen > 50,
        "found only {seen} source files: is the walk right?"
    );
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

/// `src` without comments, string and char literals, and `#[cfg(test)]` modules.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |n| n + 2);
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].bytes().take_while(|&c| c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += body
                + rest[body..]
                    .find(&close)
                    .map_or(rest.len() - body, |n| n + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && is_char_literal(rest) {
            let j = if rest.as_bytes()[1] == b'\\' {
                rest[3..].find('\'').unwrap() + 4
            } else {
                rest[1..].find('\'').unwrap() + 2
            };
            i += j;
            out.push_str("' '");
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    strip_test_modules(&out)
}

/// A `'` that opens a char literal rather than a lifetime.
fn is_char_literal(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 3 {
        return false;
    }
    if b[1] == b'\\' {
        return true;
    }
    let c = s[1..].chars().next().unwrap();
    s[1 + c.len_utf8()..].starts_with('\'')
}

fn strip_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let after = &out[at..];
        let Some(open) = after.find('{') else { break };
        let mut depth = 0;
        let mut end = after.len();
        for (k, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..at + end, "");
    }
    out
}

/// `a::{b, c::{d, self}}` → `a::b`, `a::c::d`, `a::c`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let t = tree.split(" as ").next().unwrap().trim();
        return vec![t.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            '{' => {
                depth += 1;
                cur.push(c)
            }
            '}' => {
                depth -= 1;
                cur.push(c)
            }
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    let mut out = Vec::new();
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if p == "self" {
            out.push(prefix.trim_end_matches("::").to_string());
        } else {
            out.extend(expand(&format!("{prefix}{p}")));
        }
    }
    out
}

/// A crate's files by module path (`""` is the crate root).
struct Crate {
    files: BTreeMap<String, PathBuf>,
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut paths = Vec::new();
        rust_files(src, &mut paths);
        let mut files = BTreeMap::new();
        for p in paths {
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            files.insert(parts.join("::"), p);
        }
        Crate { files }
    }

    /// The module file a path (already made absolute) lands in: its
    /// longest prefix that is a module of this crate.
    fn resolve(&self, segments: &[&str]) -> Option<String> {
        (0..=segments.len()).rev().find_map(|n| {
            let m = segments[..n].join("::");
            self.files.contains_key(&m).then_some(m)
        })
    }

    fn children(&self, module: &str) -> BTreeSet<String> {
        self.files
            .keys()
            .filter_map(|k| {
                let rest = if module.is_empty() {
                    Some(k.as_str())
                } else {
                    k.strip_prefix(module).and_then(|r| r.strip_prefix("::"))
                };
                rest.filter(|r| !r.is_empty() && !r.contains("::"))
                    .map(String::from)
            })
            .collect()
    }

    /// Which modules each module's file imports.
    fn edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges = BTreeMap::new();
        for (module, file) in &self.files {
            let code = code_only(&std::fs::read_to_string(file).unwrap());
            let children = self.children(module);
            let here: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
            let mut targets = BTreeSet::new();
            let mut add = |path: &str| {
                let segs: Vec<&str> = path.split("::").map(str::trim).collect();
                let abs: Vec<&str> = match segs[0] {
                    "crate" => segs[1..].to_vec(),
                    "self" => here
                        .iter()
                        .copied()
                        .chain(segs[1..].iter().copied())
                        .collect(),
                    "super" => {
                        let ups = segs.iter().take_while(|s| **s == "super").count();
                        let keep = here.len().saturating_sub(ups);
                        here[..keep]
                            .iter()
                            .copied()
                            .chain(segs[ups..].iter().copied())
                            .collect()
                    }
                    first if children.contains(first) => {
                        here.iter().copied().chain(segs.iter().copied()).collect()
                    }
                    _ => return,
                };
                if let Some(m) = self.resolve(&abs) {
                    if &m != module {
                        targets.insert(m);
                    }
                }
            };
            // `use` trees (re-exports included).
            let mut rest = code.as_str();
            while let Some(at) = find_word(rest, "use") {
                let tail = &rest[at + 3..];
                let end = tail.find(';').unwrap_or(tail.len());
                for leaf in expand(&tail[..end]) {
                    add(&leaf);
                }
                rest = &tail[end..];
            }
            // Paths written out in code: `crate::x::y`, `super::x`, `child::f`.
            let bytes = code.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
                    let start = i;
                    while i < bytes.len()
                        && (bytes[i].is_ascii_alphanumeric()
                            || bytes[i] == b'_'
                            || code[i..].starts_with("::"))
                    {
                        i += if code[i..].starts_with("::") { 2 } else { 1 };
                    }
                    let preceded = start > 0 && code[..start].ends_with("::");
                    let path = code[start..i].trim_end_matches(':');
                    if !preceded && path.contains("::") {
                        add(path);
                    }
                } else {
                    i += 1;
                }
            }
            edges.insert(module.clone(), targets);
        }
        edges
    }
}

fn find_word(s: &str, w: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(k) = s[from..].find(w) {
        let at = from + k;
        let before = s[..at].chars().next_back();
        let after = s[at + w.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !ident(before) && !ident(after) {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

/// Every circle in `edges`, each as the modules along it.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components: a component of more than one
    // module is a circle.
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let mut found = Vec::new();
    for src in product_crates() {
        let c = Crate::read(&src);
        for circle in circles(&c.edges()) {
            found.push(format!(
                "{}: {}",
                src.strip_prefix(root()).unwrap().display(),
                circle.join(" <-> ")
            ));
        }
    }
    assert!(
        found.is_empty(),
        "circles of imports:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_sees_a_circle_and_the_imports_it_is_made_of() {
    // GIVEN a crate of four files: a → b → c → a, and d → a through a
    // re-export written as a child path.
    let dir = tempfile::tempdir().unwrap();
    let w = |p: &str, s: &str| {
        let f = dir.path().join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, s).unwrap();
    };
    w("lib.rs", "mod a;\nmod d;\n");
    w("a/mod.rs", "mod b;\npub use b::B; // crate::d::nothing\n");
    w(
        "a/b.rs",
        "use super::super::a::c::C;\npub struct B;\nconst S: &str = \"crate::d\";\n",
    );
    w(
        "a/c.rs",
        "pub struct C(crate::a::B);\n#[cfg(test)]\nmod tests { use crate::d::D; }\n",
    );
    w("d.rs", "use crate::{a::{self, c::C}};\npub struct D;\n");
    // WHEN its edges are read
    let edges = Crate::read(dir.path()).edges();
    // THEN comments, strings and test modules add nothing, and the circle is found
    assert_eq!(edges["a"], BTreeSet::from(["a::b".to_string()]));
    assert_eq!(edges["a::b"], BTreeSet::from(["a::c".to_string()]));
    assert_eq!(edges["a::c"], BTreeSet::from(["a".to_string()]));
    assert_eq!(
        edges["d"],
        BTreeSet::from(["a".to_string(), "a::c".to_string()])
    );
    assert_eq!(
        circles(&edges),
        vec![vec![
            "a".to_string(),
            "a::b".to_string(),
            "a::c".to_string()
        ]]
    );
}

#[test]
fn the_readme_is_a_front_door_and_every_doc_link_leads_somewhere() {
    let r = root();
    let readme = std::fs::read_to_string(r.join("README.md")).unwrap();
    let n = readme.lines().count();
    assert!(
        n <= README_MAX_LINES,
        "README.md is {n} lines (at most {README_MAX_LINES}): move a topic to docs/"
    );
    let mut docs = vec![r.join("README.md")];
    for e in std::fs::read_dir(r.join("docs")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            docs.push(e.path());
        }
    }
    assert!(docs.len() >= 10, "the guides live in docs/: found {docs:?}");
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        // Links outside code blocks: `](target)`.
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if in_code {
                continue;
            }
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                let tail = &rest[at + 2..];
                let end = tail.find(')').unwrap_or(tail.len());
                let target = tail[..end].split('#').next().unwrap().trim();
                rest = &tail[end..];
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                if !doc.parent().unwrap().join(target).exists() {
                    broken.push(format!(
                        "{}: {target}",
                        doc.strip_prefix(&r).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to nothing:\n{}",
        broken.join("\n")
    );
}

#[test]
fn nothing_generated_is_tracked() {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["ls-files", "-z"])
        .output()
        .expect("git, to list the tracked files");
    assert!(
        out.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: Vec<_> = out
        .stdout
        .split(|&b| b == 0)
        .map(String::from_utf8_lossy)
        .filter(|p| {
            p.ends_with(".pyc")
                || p.contains("__pycache__/")
                || p.starts_with("target/")
                || p.contains("/target/")
        })
        .map(|p| p.into_owned())
        .collect();
    assert!(
        generated.is_empty(),
        "generated files in git: {generated:?}"
    );
}
