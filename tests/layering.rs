//! The dependency rule of DESIGN.md ("The shape of the code"), checked on the source text:
//! a module of `src/` names nothing from a layer above its own, and no two files import
//! each other (cycles are where layering quietly erodes).
//!
//! Every `crate::…` path counts, in `use` lines (groups `crate::{a, b::{c, d}}` included) and
//! inline in code (`crate::ops::conv::check_conv2d(..)`), as do `super::…` paths (resolved
//! against the file's module and its inline `mod` blocks). Comments, doc links and string
//! literals do not. Root re-exports (`crate::DType`, `crate::Rng`) resolve through lib.rs's
//! `pub use` lines. `src/bin/` (the command, the top layer) is not checked: it imports the
//! library as `wgrad::`, and its `crate::` is its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The layers, bottom first, and the top-level modules of `src/` in each. DESIGN.md lists
/// "command/examples → nn, linalg, onnx → graph, autodiff → executor, plan, fusion → ops →
/// gpu, tensor, device → shape, error"; the executor layer sits *above* the graph here, as
/// the code has it: compiling a `Graph` is the executor's job (it reads `graph::Node`,
/// `Op`, and runs `autodiff`), while the graph knows nothing of executors.
const LAYERS: &[(&str, &[&str])] = &[
    // Plain data and helpers with no device: errors, shapes, dtypes, the seeded RNG.
    (
        "shape, error",
        &["error", "shape", "dtype", "rng", "loader_env"],
    ),
    // The device, its buffers and kernels, tensors; host f64 kernels (Householder QR)
    // that both `init` and `linalg` use.
    (
        "gpu, tensor, device",
        &["gpu", "tensor", "device", "host_qr"],
    ),
    // Op families on tensors, the matmul kernel choice, optimizer kernels, the roofline
    // probe, tensor files.
    ("ops", &["ops", "autotune", "optim", "roofline", "io"]),
    ("graph, autodiff", &["graph", "autodiff", "init"]),
    (
        "executor, plan, fusion",
        &[
            "executor",
            "plan",
            "plan_reads",
            "fusion",
            "epilogue",
            "fused",
        ],
    ),
    ("nn, linalg, onnx", &["nn", "linalg", "onnx"]),
];

/// One source file: where it is, its module path, its text with comments and literals
/// blanked (same length and lines as the original), and the original lines.
struct Source {
    file: String,
    module: Vec<String>,
    code: String,
    lines: Vec<String>,
}

/// A path the file names, resolved to absolute module segments, with its line.
struct Reference {
    path: Vec<String>,
    line: usize,
    /// Inside a `#[cfg(test)]` inline module (a unit test reaching for a reference
    /// implementation elsewhere is not a build dependency).
    in_test: bool,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/ops/conv.rs` → `ops::conv`, `src/ops/mod.rs` → `ops`, `src/lib.rs` → the root.
fn module_of(rel: &Path) -> Vec<String> {
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = segs.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        segs.push(stem.to_string());
    }
    segs
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The source with comments, string literals and char literals replaced by spaces
/// (newlines kept), so that only code is scanned.
fn blank(src: &str) -> String {
    let s: Vec<char> = src.chars().collect();
    let mut out = s.clone();
    let wipe = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let prev_ident = |i: usize| i > 0 && (is_ident(s[i - 1]) || s[i - 1] == '\'');
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = s[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(s.len(), |p| i + p);
            wipe(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j] == '/' && s.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if s[j] == '*' && s.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            wipe(&mut out, i, j);
            i = j;
        } else if c == 'r'
            && (!prev_ident(i) || (s[i - 1] == 'b' && !prev_ident(i - 1)))
            && matches!(next, Some('#') | Some('"'))
        {
            // r"…", r#"…"#, br"…"
            let hashes = s[i + 1..].iter().take_while(|&&c| c == '#').count();
            if s.get(i + 1 + hashes) != Some(&'"') {
                i += 1;
                continue;
            }
            let mut j = i + 2 + hashes;
            while j < s.len() {
                if s[j] == '"'
                    && s[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == '#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            wipe(&mut out, i, j);
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            wipe(&mut out, i, j + 1);
            i = j + 1;
        } else if c == '\'' && !prev_ident(i) {
            // A char literal ('a', '\n', '\u{1F600}'), or else a lifetime ('a) left alone.
            if next == Some('\\') {
                let end = s[i + 2..]
                    .iter()
                    .position(|&c| c == '\'')
                    .map_or(s.len(), |p| i + 2 + p);
                wipe(&mut out, i, end + 1);
                i = end + 1;
            } else if s.get(i + 2) == Some(&'\'') {
                wipe(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

fn ident_at(s: &[char], i: usize) -> (String, usize) {
    let mut j = i;
    while j < s.len() && is_ident(s[j]) {
        j += 1;
    }
    (s[i..j].iter().collect(), j)
}

/// Parses a path or use tree starting at `i` (just after `prefix::`): `a::b`, `{a, b::c}`,
/// `*`, `a as b`. Every complete path goes to `out`. Returns the index after the tree.
fn parse_tree(s: &[char], i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let i = skip_ws(s, i);
    match s.get(i) {
        Some('{') => {
            let mut j = i + 1;
            loop {
                j = skip_ws(s, j);
                match s.get(j) {
                    Some('}') => return j + 1,
                    Some(',') => j += 1,
                    None => return j,
                    _ => {
                        let before = j;
                        j = parse_tree(s, j, prefix, out);
                        if j == before {
                            j += 1; // not a path: step over it
                        }
                    }
                }
            }
        }
        Some('*') => {
            out.push(prefix.to_vec());
            i + 1
        }
        Some(&c) if is_ident(c) => {
            let (name, j) = ident_at(s, i);
            let mut path = prefix.to_vec();
            if name != "self" {
                path.push(name);
            }
            let k = skip_ws(s, j);
            if s.get(k) == Some(&':') && s.get(k + 1) == Some(&':') {
                let k2 = skip_ws(s, k + 2);
                if s.get(k2) == Some(&'<') {
                    out.push(path); // turbofish: the path ends here
                    return k2;
                }
                parse_tree(s, k + 2, &path, out)
            } else {
                out.push(path);
                // `x as y`: the alias is not a path.
                let (word, after) = ident_at(s, k);
                if word == "as" {
                    let (_, end) = ident_at(s, skip_ws(s, after));
                    return end;
                }
                j
            }
        }
        _ => i,
    }
}

/// The spans of inline `mod name { … }` blocks, with their names.
fn inline_mods(s: &[char]) -> Vec<(usize, usize, String)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i + 3 < s.len() {
        let word = s[i..i + 3].iter().collect::<String>() == "mod";
        if word && (i == 0 || !is_ident(s[i - 1])) && s[i + 3].is_whitespace() {
            let (name, j) = ident_at(s, skip_ws(s, i + 3));
            let k = skip_ws(s, j);
            if !name.is_empty() && s.get(k) == Some(&'{') {
                let (mut depth, mut e) = (0usize, k);
                while e < s.len() {
                    match s[e] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    e += 1;
                }
                spans.push((k, e, name));
            }
        }
        i += 1;
    }
    spans
}

/// Whether the inline module whose `{` is at `brace` carries `#[cfg(test)]`.
fn test_attr_before(s: &[char], brace: usize) -> bool {
    let before: String = s[..brace].iter().collect();
    let Some(at) = before.rfind("mod") else {
        return false;
    };
    let attrs: String = before[..at]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    attrs.ends_with("#[cfg(test)]") || attrs.ends_with("#[cfg(test)]pub(crate)")
}

/// Every `crate::` and `super::` path of a source, resolved to absolute segments.
fn references(src: &Source) -> Vec<Reference> {
    let s: Vec<char> = src.code.chars().collect();
    let mods = inline_mods(&s);
    let line_of = |i: usize| s[..i].iter().filter(|&&c| c == '\n').count() + 1;
    let mut refs = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let starts = i == 0 || !(is_ident(s[i - 1]) || s[i - 1] == '$' || s[i - 1] == ':');
        let (word, j) = ident_at(&s, i);
        if word.is_empty() {
            i += 1;
            continue;
        }
        let colons = |k: usize| s.get(k) == Some(&':') && s.get(k + 1) == Some(&':');
        if starts && (word == "crate" || word == "super") && colons(j) {
            let base: Vec<String> = if word == "crate" {
                Vec::new()
            } else {
                // The module `super` starts from: the file's, then the inline modules
                // around this point.
                let mut m = src.module.clone();
                m.extend(
                    mods.iter()
                        .filter(|(a, b, _)| *a < i && i < *b)
                        .map(|(_, _, n)| n.clone()),
                );
                m.pop();
                let mut k = j + 2;
                loop {
                    let (w, e) = ident_at(&s, k);
                    if w == "super" && colons(e) {
                        m.pop();
                        k = e + 2;
                    } else {
                        break;
                    }
                }
                m
            };
            let mut k = j + 2;
            if word == "super" {
                while ident_at(&s, k).0 == "super" && colons(ident_at(&s, k).1) {
                    k = ident_at(&s, k).1 + 2;
                }
            }
            let mut paths = Vec::new();
            let end = parse_tree(&s, k, &base, &mut paths);
            let in_test = mods
                .iter()
                .any(|(a, b, _)| *a < i && i < *b && test_attr_before(&s, *a));
            for path in paths {
                refs.push(Reference {
                    path,
                    line: line_of(i),
                    in_test,
                });
            }
            i = end.max(j);
        } else {
            i = j;
        }
    }
    refs
}

/// Root re-exports from lib.rs: `DType` → `dtype::DType`.
fn reexports(lib: &Source) -> HashMap<String, Vec<String>> {
    let s: Vec<char> = lib.code.chars().collect();
    let mut map = HashMap::new();
    let text: String = s.iter().collect();
    for (at, _) in text.match_indices("pub use ") {
        let mut paths = Vec::new();
        parse_tree(&s, at + "pub use ".len(), &[], &mut paths);
        for p in paths {
            if let Some(last) = p.last() {
                map.insert(last.clone(), p);
            }
        }
    }
    map
}

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

struct Crate {
    sources: Vec<Source>,
    reexports: HashMap<String, Vec<String>>,
}

impl Crate {
    fn load() -> Crate {
        let root = src_dir();
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let mut sources = Vec::new();
        for p in files {
            let rel = p.strip_prefix(&root).expect("under src/").to_path_buf();
            if rel.starts_with("bin") {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("read source");
            sources.push(Source {
                file: format!("src/{}", rel.display()),
                module: module_of(&rel),
                code: blank(&text),
                lines: text.lines().map(str::to_string).collect(),
            });
        }
        let lib = sources
            .iter()
            .find(|s| s.module.is_empty())
            .expect("src/lib.rs");
        let reexports = reexports(lib);
        Crate { sources, reexports }
    }

    /// The path with a root re-export expanded (`DType` → `dtype::DType`).
    fn expand(&self, path: &[String]) -> Vec<String> {
        match path.first() {
            Some(first) if layer_of(first).is_none() => match self.reexports.get(first) {
                Some(full) => full.iter().chain(&path[1..]).cloned().collect(),
                None => path.to_vec(),
            },
            _ => path.to_vec(),
        }
    }
}

/// Upward references, as messages: the file, the line, and which layers.
fn layer_violations(krate: &Crate) -> (Vec<String>, BTreeSet<String>) {
    let mut bad = Vec::new();
    let mut unknown = BTreeSet::new();
    for src in &krate.sources {
        let Some(top) = src.module.first() else {
            continue; // lib.rs: module list and re-exports
        };
        let Some(own) = layer_of(top) else {
            unknown.insert(format!("{} (module `{top}`)", src.file));
            continue;
        };
        let mut seen = BTreeSet::new();
        for r in references(src) {
            let path = krate.expand(&r.path);
            let Some(first) = path.first() else { continue };
            let Some(theirs) = layer_of(first) else {
                if r.path.len() > 1 || first.chars().next().is_some_and(char::is_lowercase) {
                    unknown.insert(format!(
                        "{}:{}: crate::{}",
                        src.file,
                        r.line,
                        r.path.join("::")
                    ));
                }
                continue;
            };
            // One message per line (a grouped `use` names several items).
            if theirs > own && seen.insert(r.line) {
                bad.push(format!(
                    "{}:{}: `{}` reaches up from layer \"{}\" to `crate::{}` in layer \"{}\"",
                    src.file,
                    r.line,
                    src.lines[r.line - 1].trim(),
                    LAYERS[own].0,
                    path.join("::"),
                    LAYERS[theirs].0,
                ));
            }
        }
    }
    (bad, unknown)
}

/// Which file each path lands in: the longest prefix that is a module file.
fn file_edges(krate: &Crate) -> BTreeMap<(String, String), (usize, String)> {
    let by_module: HashMap<Vec<String>, &str> = krate
        .sources
        .iter()
        .map(|s| (s.module.clone(), s.file.as_str()))
        .collect();
    let mut edges = BTreeMap::new();
    for src in &krate.sources {
        if src.module.is_empty() {
            continue;
        }
        for r in references(src).into_iter().filter(|r| !r.in_test) {
            let path = krate.expand(&r.path);
            let target = (1..=path.len())
                .rev()
                .find_map(|n| by_module.get(&path[..n]).copied());
            let Some(target) = target else { continue };
            if target != src.file {
                edges
                    .entry((src.file.clone(), target.to_string()))
                    .or_insert((r.line, src.lines[r.line - 1].trim().to_string()));
            }
        }
    }
    edges
}

/// The import cycles among files (strongly connected sets of two or more files), each with
/// the imports that close it: `a.rs:line `use …`` per edge inside the set.
fn import_cycles(krate: &Crate) -> Vec<(Vec<String>, Vec<String>)> {
    let edges = file_edges(krate);
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        adj.entry(a).or_default().push(b);
    }
    let reach = |from: &str| {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![from]);
        while let Some(x) = todo.pop() {
            for &y in adj.get(x).into_iter().flatten() {
                if seen.insert(y) {
                    todo.push(y);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&str, BTreeSet<&str>> = adj.keys().map(|&n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut cycles = Vec::new();
    for (&n, from_n) in &reachable {
        if done.contains(n) || !from_n.contains(n) {
            continue;
        }
        let set: Vec<&str> = from_n
            .iter()
            .copied()
            .filter(|m| reachable.get(m).is_some_and(|r| r.contains(n)))
            .collect();
        done.extend(set.iter().copied());
        let inside: Vec<String> = edges
            .iter()
            .filter(|((a, b), _)| set.contains(&a.as_str()) && set.contains(&b.as_str()))
            .map(|((a, b), (line, text))| format!("{a}:{line} `{text}` -> {b}"))
            .collect();
        cycles.push((set.iter().map(|f| f.to_string()).collect(), inside));
    }
    cycles
}

/// Import cycles inside one op family that predated this check, listed here as debts until
/// paid: each was a file that dispatched to a specialised sibling which in turn used the
/// first file's helpers (conv/conv_gemm, elementwise/half, loss/loss_vocab), and all are
/// paid. Do not add to this list: move the shared helpers into a module both import, or
/// reach the sibling through a `Tensor` method it defines.
const KNOWN_CYCLES: &[&[&str]] = &[];

#[test]
fn no_module_imports_from_a_higher_layer() {
    let krate = Crate::load();
    let (bad, unknown) = layer_violations(&krate);
    assert!(
        unknown.is_empty(),
        "modules or paths missing from tests/layering.rs's LAYERS table:\n  {}",
        unknown.into_iter().collect::<Vec<_>>().join("\n  ")
    );
    assert!(
        bad.is_empty(),
        "{} upward import(s) (DESIGN.md, \"The shape of the code\": a module imports only \
         from its own layer or below; move the shared piece down):\n  {}",
        bad.len(),
        bad.join("\n  ")
    );
}

#[test]
fn no_import_cycles_among_files() {
    let krate = Crate::load();
    let cycles = import_cycles(&krate);
    let known = |set: &[String]| KNOWN_CYCLES.iter().any(|k| k == &set);
    let new: Vec<String> = cycles
        .iter()
        .filter(|(set, _)| !known(set))
        .map(|(set, inside)| format!("{}:\n    {}", set.join(" <-> "), inside.join("\n    ")))
        .collect();
    assert!(
        new.is_empty(),
        "{} import cycle(s) among files (DESIGN.md: two files never import each other; move \
         the shared piece into a module both can import):\n  {}",
        new.len(),
        new.join("\n  ")
    );
    let paid: Vec<&&[&str]> = KNOWN_CYCLES
        .iter()
        .filter(|k| !cycles.iter().any(|(set, _)| set == *k))
        .collect();
    assert!(
        paid.is_empty(),
        "paid debts still listed in KNOWN_CYCLES (remove them): {paid:?}"
    );
}

/// The checker itself: it sees grouped, inline, re-exported and `super` paths, and not
/// comments or strings.
#[test]
fn the_checker_sees_every_kind_of_path() {
    let src = |file: &str, module: &[&str], text: &str| Source {
        file: file.to_string(),
        module: module.iter().map(|m| m.to_string()).collect(),
        code: blank(text),
        lines: text.lines().map(str::to_string).collect(),
    };
    let lib = src(
        "src/lib.rs",
        &[],
        "pub mod graph;\npub use graph::{Graph, Var};\npub use dtype::DType;\n",
    );
    let ops = src(
        "src/ops/x.rs",
        &["ops", "x"],
        concat!(
            "use crate::{tensor::Tensor, graph::{Op, Var}};\n", // 1: grouped, upward
            "// use crate::executor::Executor;\n",              // 2: a comment
            "const S: &str = \"crate::nn::Linear\";\n",         // 3: a string
            "fn f() { let g = crate::Graph::new(); }\n",        // 4: inline re-export
            "/// [`crate::onnx::import`]\n",                    // 5: a doc link
            "fn h() -> crate::DType { crate::init::Init::Zeros }\n", // 6: inline, upward
            "mod tests { use super::super::y; use super::f; }\n", // 7: super in a mod
        ),
    );
    let reexports = reexports(&lib);
    let krate = Crate {
        sources: vec![lib, ops],
        reexports,
    };
    let (bad, unknown) = layer_violations(&krate);
    assert!(unknown.is_empty(), "{unknown:?}");
    let lines: Vec<&str> = bad
        .iter()
        .map(|b| b.split(": `").next().unwrap_or(""))
        .collect();
    assert_eq!(
        lines,
        ["src/ops/x.rs:1", "src/ops/x.rs:4", "src/ops/x.rs:6"],
        "{bad:#?}"
    );
    assert!(bad[0].contains("crate::graph::Op"), "{}", bad[0]);
    assert!(bad[1].contains("crate::graph::Graph::new"), "{}", bad[1]);
    assert!(bad[2].contains("crate::init::Init::Zeros"), "{}", bad[2]);
    let refs: Vec<String> = references(&krate.sources[1])
        .into_iter()
        .filter(|r| r.line == 7)
        .map(|r| r.path.join("::"))
        .collect();
    assert_eq!(refs, ["ops::y", "ops::x::f"]);

    // Cycles: a <-> b is one; c's unit test reaching into a is not an import.
    let a = src(
        "src/ops/a.rs",
        &["ops", "a"],
        "use crate::ops::b::B;\npub struct A;\n",
    );
    let b = src(
        "src/ops/b.rs",
        &["ops", "b"],
        "pub struct B;\nfn f() -> crate::ops::a::A { todo!() }\n",
    );
    let c = src(
        "src/ops/c.rs",
        &["ops", "c"],
        "use crate::ops::a::A;\n#[cfg(test)]\nmod tests {\n    use crate::ops::c::C;\n    use super::super::b::B;\n}\n",
    );
    let krate = Crate {
        sources: vec![a, b, c],
        reexports: HashMap::new(),
    };
    let cycles = import_cycles(&krate);
    assert_eq!(
        cycles.len(),
        1,
        "{:?}",
        cycles.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    assert_eq!(cycles[0].0, ["src/ops/a.rs", "src/ops/b.rs"]);
    assert_eq!(cycles[0].1.len(), 2, "{:?}", cycles[0].1);
}
