//! The module layering (docs/architecture.md, "Layers"): reads the `crate::`, `super::` and `self::`
//! paths in src/ and fails when a top-level module imports from a layer above its own, unless the
//! edge is in `KNOWN_UPWARD_EDGES` (empty since issue 15), which may only shrink; likewise for
//! import cycles inside one layer (`KNOWN_SAME_LAYER_CYCLES`).
//! Inside `FILE_LEVEL` directories (session/, pool/) the files themselves are graphed and may not
//! import each other in a cycle (`files_inside_session_and_pool_import_without_cycles`).
//! `LAYERS_PRINT=1 cargo test --test layers -- --nocapture` prints the whole graph and its cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every top-level module of src/ and its layer, bottom (0) to top. Target layers: base
/// (protocol, stream, config), tls/auth, clients, server, pool, observe, shared,
/// session/admin/metrics/janitor, listener. A module may import only from its own layer or below.
const LAYERS: &[(&str, u8)] = &[
    // 0 base: wire format, sockets, configuration, leaf utilities.
    ("protocol", 0),
    ("stream", 0),
    ("config", 0),
    ("error", 0),
    ("name_cap", 0),
    ("procfs", 0),
    ("logging", 0),
    ("bind", 0),
    ("tcp_options", 0),
    ("upgrade", 0),
    ("workers", 0),
    // 1 tls/auth, and the per-config security state built from them.
    ("tls", 1),
    ("auth", 1),
    ("security", 1),
    // 2 clients: the registry of all clients (cancel keys, what each holds) and admission.
    ("clients", 2),
    // 3 server connections.
    ("server", 3),
    // 4 pools.
    ("pool", 4),
    // 4 the pools' listening connections for LISTEN/NOTIFY (above the pools they log in through).
    ("notify", 4),
    // 5 observe: the read-only view the console and the exporter both render.
    ("observe", 5),
    // 6 what every task of one pooler sees.
    ("shared", 6),
    // 7 the users of `Shared`: sessions, the console, the exporter, process-wide timers.
    ("session", 7),
    ("admin", 7),
    ("metrics", 7),
    ("janitor", 7),
    ("service", 7),
    // 8 accept loops and starting a pooler.
    ("listener", 8),
    // `sluice convert`: reads pgbouncer.ini, writes the config's TOML (a tool of the CLI).
    ("convert", 8),
    ("handover", 8),
];

/// Known upward edges (importer -> imported), tolerated as debt. Issue 15 removed the last ten
/// (auth, cancel and client_info -> server, config -> tls, tls -> server, leaks and stats ->
/// shared, pool -> leaks, pool -> metrics, shared -> metrics), and the list should stay empty:
/// an entry that no longer exists fails the test, so it can only shrink.
const KNOWN_UPWARD_EDGES: &[(&str, &str)] = &[];

/// Known import cycles inside one layer (an upward edge is needed for any other cycle), as
/// sorted module lists; empty since issue 15 (cancel <-> client_info became `clients/`). Like
/// `KNOWN_UPWARD_EDGES`, a cycle that is gone must leave the list.
const KNOWN_SAME_LAYER_CYCLES: &[&[&str]] = &[];

/// Names the crate root re-exports (`use crate::{Config, Error}`) and the module they come from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Config", "config"),
    ("Error", "error"),
    ("start", "listener"),
    ("RunningPooler", "listener"),
];

/// Directories whose files are graphed one by one, and must not import each other in a cycle.
const FILE_LEVEL: &[&str] = &["session", "pool"];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Tokens of one Rust source, without comments, string/char literals and lifetimes.
fn lex(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
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
        } else if ch == '"' {
            i = skip_string(&c, i + 1);
        } else if let Some((hashes, body)) = raw_string_start(&c, i) {
            i = skip_raw_string(&c, body, hashes);
        } else if ch == 'b' && next == Some('"') {
            i = skip_string(&c, i + 2);
        } else if ch == '\'' {
            i = skip_char_or_lifetime(&c, i);
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if ch == ':' && next == Some(':') {
            out.push(Tok::PathSep);
            i += 2;
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// Index after the closing quote of a string whose body starts at `i`.
fn skip_string(c: &[char], mut i: usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// For `r"`, `r#"`, `br#"`: the number of hashes and the index of the body.
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    if !matches!(c[i], 'r' | 'b') || (i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')) {
        return None;
    }
    let mut j = i;
    if c[j] == 'b' {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&h| h == '#').count();
    j += hashes;
    (c.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

/// Index after the `"###` that closes a raw string whose body starts at `i`.
fn skip_raw_string(c: &[char], mut i: usize, hashes: usize) -> usize {
    while i < c.len() {
        if c[i] == '"' && c[i + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// Index after a char literal (`'x'`, `'\n'`) or a lifetime (`'a`).
fn skip_char_or_lifetime(c: &[char], i: usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        let mut j = i + 2;
        while j < c.len() && c[j] != '\'' {
            j += 1;
        }
        return j + 1;
    }
    if c.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    let mut j = i + 1;
    while j < c.len() && (c[j].is_alphanumeric() || c[j] == '_') {
        j += 1;
    }
    j
}

/// Parses the path tree at `toks[i]` (after a `::`): `a::b`, `{a, b::{c, d}}`, `*`. Pushes every
/// full path (prefix + segments) to `out` and returns the index after the tree.
fn path_tree(toks: &[Tok], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) => {
                if s != "self" {
                    path.push(s.clone());
                }
                i += 1;
                if toks.get(i) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                out.push(path);
                return i;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        None => return i,
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        Some(Tok::Ident(_)) | Some(Tok::Punct('{')) => {
                            i = path_tree(toks, i, path.clone(), out);
                            // `as alias`
                            if toks.get(i) == Some(&Tok::Ident("as".into())) {
                                i += 2;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            _ => {
                out.push(path);
                return i;
            }
        }
    }
}

/// The module path of a file under src/: `session/prepared.rs` -> [session, prepared].
fn file_module(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Every absolute crate path a source names, with `super::`/`self::` resolved against the
/// module (and the inline `mod x { }` blocks) the path appears in.
fn crate_paths(src: &str, module: &[String]) -> Vec<Vec<String>> {
    scan_paths(src, module, &BTreeSet::new())
        .into_iter()
        .map(|r| r.path)
        .collect()
}

/// A path a source names, and the `use` declaration it is part of, if any.
#[derive(Debug)]
struct Ref {
    path: Vec<String>,
    /// Named in a `use` (the last segment becomes a name in the file's scope), not a glob.
    imported: bool,
    /// Named in a `pub use`/`pub(..) use`: a re-export, not the file's own use of the item.
    reexported: bool,
}

/// The child modules a file declares (`mod x;`, not inline `mod x { }` blocks).
fn declared_children(src: &str) -> BTreeSet<String> {
    let toks = lex(src);
    toks.windows(3)
        .filter_map(|w| match w {
            [Tok::Ident(m), Tok::Ident(name), Tok::Punct(';')] if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Like `crate_paths`, and also the paths that start at a child module the file declares
/// (`link::Link` in a mod.rs with `mod link;`), each marked with the `use` it is part of.
fn scan_paths(src: &str, module: &[String], children: &BTreeSet<String>) -> Vec<Ref> {
    let toks = lex(src);
    let mut out = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    // Inside a `use` declaration: whether it is a `pub` one.
    let mut in_use: Option<bool> = None;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(kw) if kw == "use" => {
                let public = (i >= 1 && toks[i - 1] == Tok::Ident("pub".into()))
                    || (i >= 2
                        && toks[i - 1] == Tok::Punct(')')
                        && toks[..i - 1]
                            .iter()
                            .rev()
                            .take(4)
                            .any(|t| *t == Tok::Ident("pub".into())));
                in_use = Some(public);
            }
            Tok::Punct(';') => in_use = None,
            Tok::Ident(head)
                if children.contains(head)
                    && toks.get(i + 1) == Some(&Tok::PathSep)
                    && (i == 0 || toks[i - 1] != Tok::PathSep) =>
            {
                let mut paths = Vec::new();
                i = path_tree(&toks, i, module.to_vec(), &mut paths);
                push_refs(&mut out, paths, in_use, toks.get(i));
                continue;
            }
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) = (toks.get(i + 1), toks.get(i + 2)) {
                    inline.push((name.clone(), depth));
                }
            }
            Tok::Ident(head)
                if matches!(head.as_str(), "crate" | "super" | "self")
                    && toks.get(i + 1) == Some(&Tok::PathSep)
                    && (i == 0 || toks[i - 1] != Tok::PathSep) =>
            {
                let mut here: Vec<String> = module.to_vec();
                here.extend(inline.iter().map(|(n, _)| n.clone()));
                let mut j = i;
                let base = match head.as_str() {
                    "crate" => {
                        j += 2;
                        Vec::new()
                    }
                    "self" => {
                        j += 2;
                        here
                    }
                    _ => {
                        while toks.get(j) == Some(&Tok::Ident("super".into()))
                            && toks.get(j + 1) == Some(&Tok::PathSep)
                        {
                            here.pop();
                            j += 2;
                        }
                        here
                    }
                };
                let mut paths = Vec::new();
                i = path_tree(&toks, j, base, &mut paths);
                push_refs(&mut out, paths, in_use, toks.get(i));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Records the paths of one path tree; `next` is the token after it (`*` for a glob import).
fn push_refs(out: &mut Vec<Ref>, paths: Vec<Vec<String>>, in_use: Option<bool>, next: Option<&Tok>) {
    let glob = next == Some(&Tok::Punct('*'));
    for path in paths {
        out.push(Ref {
            path,
            imported: in_use.is_some() && !glob,
            reexported: in_use == Some(true),
        });
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules and the edges between them (with the files that make each edge).
struct Graph {
    top: BTreeMap<(String, String), BTreeSet<String>>,
    modules: BTreeSet<String>,
}

/// The node a module path belongs to: its top-level module, with the root re-exports mapped.
fn top_node(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let first = path.first()?;
    if modules.contains(first) {
        return Some(first.clone());
    }
    ROOT_REEXPORTS
        .iter()
        .find(|(name, _)| name == first)
        .map(|(_, m)| m.to_string())
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rel = |p: &Path| p.strip_prefix(&src).expect("under src").to_path_buf();
    let mut modules = BTreeSet::new();
    for f in &files {
        let m = file_module(&rel(f));
        if let Some(first) = m.first().filter(|n| *n != "main") {
            modules.insert(first.clone());
        }
    }
    let mut g = Graph {
        top: BTreeMap::new(),
        modules,
    };
    for f in &files {
        let r = rel(f);
        let module = file_module(&r);
        // The crate root and the binary are not layered.
        let Some(from) = module.first().filter(|n| *n != "main").cloned() else {
            continue;
        };
        let text = fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        let shown = format!("src/{}", r.display());
        for path in crate_paths(&text, &module) {
            let Some(to) = top_node(&path, &g.modules) else {
                continue;
            };
            if to != from {
                g.top
                    .entry((from.clone(), to.clone()))
                    .or_default()
                    .insert(shown.clone());
            }
        }
    }
    g
}

/// One file's source, module path and declared child modules.
struct SourceFile {
    module: Vec<String>,
    shown: String,
    text: String,
    children: BTreeSet<String>,
}

/// The file-level import graph inside each `FILE_LEVEL` directory (see
/// `files_inside_session_and_pool_import_without_cycles` for the rules). Nodes are module paths
/// (`session::statements::prepared`; a mod.rs is its directory's module, `session::statements`).
/// Returns the edges (importer, imported) with the files that make them.
fn file_graph() -> BTreeMap<(String, String), BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let sources: Vec<SourceFile> = paths
        .iter()
        .map(|f| {
            let r = f.strip_prefix(&src).expect("under src");
            let text = fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            SourceFile {
                module: file_module(r),
                shown: format!("src/{}", r.display()),
                children: declared_children(&text),
                text,
            }
        })
        .collect();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|f| f.module.clone()).collect();
    // The names each file brings into scope with `use`, and where they come from.
    let mut imports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut refs = Vec::new();
    for f in &sources {
        let found = scan_paths(&f.text, &f.module, &f.children);
        for r in found.iter().filter(|r| r.imported) {
            if let Some(name) = r.path.last() {
                imports
                    .entry(f.module.clone())
                    .or_default()
                    .insert(name.clone(), r.path.clone());
            }
        }
        refs.push(found);
    }
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (f, found) in sources.iter().zip(&refs) {
        if !f.module.first().is_some_and(|d| FILE_LEVEL.contains(&d.as_str())) {
            continue;
        }
        for r in found.iter().filter(|r| !r.reexported) {
            let Some(to) = defining_file(&r.path, &modules, &imports, 0) else {
                continue;
            };
            if to.first() == f.module.first() && to != f.module {
                edges
                    .entry((f.module.join("::"), to.join("::")))
                    .or_default()
                    .insert(f.shown.clone());
            }
        }
    }
    edges
}

/// The file that defines what `path` names: the longest prefix of it that is a file's module,
/// following a name that file only imports (`super::Link` where the parent has `use link::Link`)
/// to where it comes from.
fn defining_file(
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
    imports: &BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
    hops: usize,
) -> Option<Vec<String>> {
    let k = (1..=path.len()).rev().find(|&k| modules.contains(&path[..k]))?;
    let file = path[..k].to_vec();
    let followed = path
        .get(k)
        .and_then(|name| imports.get(&file)?.get(name))
        .filter(|target| hops < 8 && target.as_slice() != path);
    match followed {
        Some(target) => {
            let mut next = target.clone();
            next.extend_from_slice(&path[k + 1..]);
            defining_file(&next, modules, imports, hops + 1).or(Some(file))
        }
        None => Some(file),
    }
}

/// True when `to` is a module that contains `from` (its parent directory's mod.rs, or higher).
fn is_ancestor(to: &str, from: &str) -> bool {
    from.strip_prefix(to).is_some_and(|rest| rest.starts_with("::"))
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Strongly connected components with more than one node (the cycles), by Tarjan's algorithm.
fn cycles<'a>(edges: impl Iterator<Item = &'a (String, String)>) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    struct T<'a> {
        adj: &'a BTreeMap<&'a str, Vec<&'a str>>,
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
        for &w in &t.adj[v] {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        adj: &adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in adj.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn print_graph(g: &Graph) {
    println!("top-level edges (importer -> imported [layers], files):");
    for ((a, b), files) in &g.top {
        let shown = |m: &str| layer(m).map_or("?".to_string(), |l| l.to_string());
        let mark = if layer(a) < layer(b) { "  UPWARD" } else { "" };
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        println!(
            "  {a} -> {b} [{} -> {}]{mark}  ({})",
            shown(a),
            shown(b),
            files.join(", ")
        );
    }
    println!("top-level cycles: {:?}", cycles(g.top.keys()));
    let files = file_graph();
    println!("file-level edges inside {FILE_LEVEL:?} (\"to parent\": allowed, not in cycles):");
    for ((a, b), shown) in &files {
        let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
        let mark = if is_ancestor(b, a) { "  to parent" } else { "" };
        println!("  {a} -> {b}{mark}  ({})", shown.join(", "));
    }
    let counted = files.keys().filter(|(a, b)| !is_ancestor(b, a));
    println!("file-level cycles: {:?}", cycles(counted));
}

#[test]
fn modules_import_only_from_their_layer_or_below() {
    let g = graph();
    if std::env::var_os("LAYERS_PRINT").is_some() {
        print_graph(&g);
    }
    let mut problems = Vec::new();
    for m in &g.modules {
        if layer(m).is_none() {
            problems.push(format!(
                "module `{m}` has no layer: add it to LAYERS in tests/layers.rs"
            ));
        }
    }
    for (m, _) in LAYERS {
        if !g.modules.contains(*m) {
            problems.push(format!("LAYERS names `{m}`, which is not a module of src/"));
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN_UPWARD_EDGES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for ((a, b), files) in &g.top {
        let (Some(la), Some(lb)) = (layer(a), layer(b)) else {
            continue;
        };
        if la < lb && !known.contains(&(a.clone(), b.clone())) {
            problems.push(format!(
                "upward import: `{a}` (layer {la}) -> `{b}` (layer {lb}), in {}",
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for (a, b) in &known {
        let upward = matches!((layer(a), layer(b)), (Some(la), Some(lb)) if la < lb);
        if !g.top.contains_key(&(a.clone(), b.clone())) {
            problems.push(format!(
                "KNOWN_UPWARD_EDGES lists `{a}` -> `{b}`, which is gone: remove it from the list"
            ));
        } else if !upward {
            problems.push(format!(
                "KNOWN_UPWARD_EDGES lists `{a}` -> `{b}`, which is not upward: remove it"
            ));
        }
    }
    let same_layer = g.top.keys().filter(|(a, b)| layer(a) == layer(b));
    let found = cycles(same_layer);
    for c in &found {
        if !KNOWN_SAME_LAYER_CYCLES.contains(&c.iter().map(String::as_str).collect::<Vec<_>>().as_slice()) {
            problems.push(format!("import cycle inside one layer, among: {}", c.join(", ")));
        }
    }
    for c in KNOWN_SAME_LAYER_CYCLES {
        if !found
            .iter()
            .any(|f| f.iter().map(String::as_str).eq(c.iter().copied()))
        {
            problems.push(format!(
                "KNOWN_SAME_LAYER_CYCLES lists {c:?}, which is gone: remove it from the list"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "module layering broken ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// The files of session/ and pool/ (`FILE_LEVEL`) import each other without cycles, so each
/// sub-part of a session or a pool can be read, changed and tested from the bottom up. The rules
/// of the file graph:
/// - A node is a file, named by its module path; a mod.rs is its directory's module
///   (`session::statements` is src/session/statements/mod.rs).
/// - An edge is real code use: a file naming an item of another file through `crate::`,
///   `super::`, `self::`, or a child module it declares (`relay::flush_client` in a mod.rs with
///   `mod relay;`). A `mod x;` line is no edge, and neither is a `pub use` (a re-export: the
///   file does not use the item, it only lets others name it there).
/// - A name that a mod.rs only imports or re-exports is followed to the file that defines it:
///   `super::Link` in a child of session/, where session/mod.rs has `use link::Link`, is an edge
///   to `session::link`, not to `session`. So a cycle between siblings cannot hide behind their
///   parent, and a cycle "through" a mod.rs counts exactly when that mod.rs's own code is used
///   on one side and uses the other side itself.
/// - An edge from a file to an item its parent (or any ancestor) mod.rs defines is allowed and
///   left out of the cycle search: a mod.rs defines what its children share (`Session`,
///   `pool::Pool`, the statements' `Outcome`) and composes them, so a child naming its parent's
///   own item is the directory's ordinary shape, not a knot. Everything else between the files
///   of one directory tree (siblings, nephews, a parent using a child) counts.
/// - Aliased imports (`use a::b as c`) are not followed (none are used in these directories).
#[test]
fn files_inside_session_and_pool_import_without_cycles() {
    let files = file_graph();
    assert!(
        files
            .keys()
            .any(|(a, b)| a == "session::relay" && b == "session::link"),
        "the file graph lost a known edge (session::relay -> session::link): the scanner is broken"
    );
    let counted = files.keys().filter(|(a, b)| !is_ancestor(b, a));
    let found = cycles(counted);
    let described: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = files
                .iter()
                .filter(|((a, b), _)| c.contains(a) && c.contains(b) && !is_ancestor(b, a))
                .map(|((a, b), shown)| {
                    let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
                    format!("{a} -> {b} ({})", shown.join(", "))
                })
                .collect();
            format!("{}:\n    {}", c.join(", "), edges.join("\n    "))
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles between files inside {FILE_LEVEL:?}:\n  {}",
        described.join("\n  ")
    );
}

#[test]
fn file_scanner_follows_child_modules_and_imports_but_not_reexports() {
    let src = r#"
        mod link;
        mod relay;
        pub use relay::RelayEnd;
        use link::{Link, Timeouts};
        fn f() { relay::flush_client(); other::link::x(); }
        mod tests { use super::*; }
    "#;
    let module = ["session".to_string()];
    let children = declared_children(src);
    assert_eq!(
        children,
        BTreeSet::from(["link".to_string(), "relay".to_string()])
    );
    let got: Vec<(String, bool, bool)> = scan_paths(src, &module, &children)
        .iter()
        .map(|r| (r.path.join("::"), r.imported, r.reexported))
        .collect();
    let s = |p: &str, i, r| (p.to_string(), i, r);
    assert_eq!(
        got,
        [
            s("session::relay::RelayEnd", true, true),
            s("session::link::Link", true, false),
            s("session::link::Timeouts", true, false),
            s("session::relay::flush_client", false, false),
            s("session", false, false),
        ]
    );
    let modules = BTreeSet::from([
        vec!["session".to_string()],
        vec!["session".to_string(), "link".to_string()],
    ]);
    let imports = BTreeMap::from([(
        vec!["session".to_string()],
        BTreeMap::from([(
            "Link".to_string(),
            vec!["session".into(), "link".into(), "Link".into()],
        )]),
    )]);
    let named = |p: &[&str]| {
        let p: Vec<String> = p.iter().map(|x| x.to_string()).collect();
        defining_file(&p, &modules, &imports, 0).map(|m| m.join("::"))
    };
    assert_eq!(
        named(&["session", "Link", "new"]).as_deref(),
        Some("session::link")
    );
    assert_eq!(named(&["session", "Session"]).as_deref(), Some("session"));
    assert!(is_ancestor("session", "session::login::startup"));
    assert!(!is_ancestor("session::log", "session::login"));
}

#[test]
fn scanner_resolves_groups_super_and_skips_comments_and_strings() {
    let src = r#"
        //! use crate::admin::X;
        use crate::{Config, pool::{Pool, checkout::Seat}, server::ServerConn as S};
        /* crate::metrics::M */
        fn f() { let _ = "crate::session::Y"; let _c = '{'; crate::stats::fold(); }
        use super::prepared::Plans;
        mod tests { use super::*; use super::super::link::Link; }
    "#;
    let module = ["session".to_string(), "relay".to_string()];
    let got: Vec<String> = crate_paths(src, &module).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        [
            "Config",
            "pool::Pool",
            "pool::checkout::Seat",
            "server::ServerConn",
            "stats::fold",
            "session::prepared::Plans",
            "session::relay",
            "session::link::Link",
        ]
    );
}
