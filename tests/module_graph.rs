//! No import cycle between files: in every crate of the workspace, the graph whose nodes are
//! source files and whose edges are the paths a file names (`use` items and paths in code,
//! test modules left out) is acyclic. This is what `cargo modules dependencies --acyclic`
//! checks, without building rust-analyzer in CI.
//!
//! A path is resolved to the deepest source file it reaches: `crate::models::Network` is an
//! edge to `models/mod.rs` (where `Network` is re-exported), `crate::models::network::Network`
//! an edge to `models/network.rs`. So inside a crate, a file names an item by its home, and a
//! `mod.rs` or `lib.rs` only declares modules and re-exports them for other crates.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use syn::visit::Visit;

type ModPath = Vec<String>;

/// Every source file of a crate by its module path (`["models", "conv"]`).
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: ModPath =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            found.insert(parts, path);
        }
    }
    found
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string() == "test")
    })
}

/// Collects the paths a file names, each with the module it is named in.
struct PathCollector {
    module: ModPath,
    paths: Vec<(ModPath, Vec<String>)>,
}

impl PathCollector {
    fn use_tree(&mut self, prefix: &[String], tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                let mut next = prefix.to_vec();
                next.push(p.ident.to_string());
                self.use_tree(&next, &p.tree);
            }
            syn::UseTree::Name(n) => self.push([prefix, &[n.ident.to_string()]].concat()),
            syn::UseTree::Rename(r) => self.push([prefix, &[r.ident.to_string()]].concat()),
            syn::UseTree::Glob(_) => self.push(prefix.to_vec()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
        }
    }

    fn push(&mut self, segments: Vec<String>) {
        if segments.len() > 1 {
            self.paths.push((self.module.clone(), segments));
        }
    }
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            _ => &[],
        };
        if is_test_only(attrs) {
            return;
        }
        match item {
            syn::Item::Use(u) => self.use_tree(&[], &u.tree),
            syn::Item::Mod(m) if m.content.is_some() => {
                self.module.push(m.ident.to_string());
                syn::visit::visit_item_mod(self, m);
                self.module.pop();
            }
            _ => syn::visit::visit_item(self, item),
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// The file a path reaches, named in module `module` of the file at `file_module`.
fn resolve(files: &BTreeMap<ModPath, PathBuf>, module: &[String], segments: &[String]) -> Option<ModPath> {
    let mut absolute: ModPath = Vec::new();
    let mut rest = segments;
    match segments[0].as_str() {
        "crate" => rest = &segments[1..],
        "self" => {
            absolute = module.to_vec();
            rest = &segments[1..];
        }
        "super" => {
            absolute = module.to_vec();
            while rest.first().is_some_and(|s| s == "super") {
                absolute.pop();
                rest = &rest[1..];
            }
        }
        first => {
            // A child module of the current one, named without `self::`.
            let mut child = module.to_vec();
            child.push(first.to_string());
            if !files.contains_key(&child) {
                return None;
            }
            absolute = module.to_vec();
        }
    }
    absolute.extend(rest.iter().cloned());
    (0..=absolute.len()).rev().map(|n| absolute[..n].to_vec()).find(|p| files.contains_key(p))
}

/// The module path of the file that holds module `module` (inline modules live in their
/// parent's file).
fn file_of(files: &BTreeMap<ModPath, PathBuf>, module: &[String]) -> ModPath {
    (0..=module.len()).rev().map(|n| module[..n].to_vec()).find(|p| files.contains_key(p)).unwrap()
}

fn cycles_in(src: &Path) -> Vec<Vec<String>> {
    let files = modules(src);
    let mut graph = petgraph::graphmap::DiGraphMap::<usize, ()>::new();
    let index: BTreeMap<&ModPath, usize> = files.keys().enumerate().map(|(i, m)| (m, i)).collect();
    let names: Vec<String> =
        files.values().map(|p| p.strip_prefix(src).unwrap().display().to_string()).collect();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut collector = PathCollector { module: module.clone(), paths: Vec::new() };
        for item in &parsed.items {
            collector.visit_item(item);
        }
        let from = index[module];
        graph.add_node(from);
        for (named_in, segments) in collector.paths {
            let Some(target) = resolve(&files, &named_in, &segments) else { continue };
            let to = index[&file_of(&files, &target)];
            if to != from {
                graph.add_edge(from, to, ());
            }
        }
    }
    petgraph::algo::tarjan_scc(&graph)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            let mut members: Vec<String> = scc.iter().map(|&i| names[i].clone()).collect();
            members.sort();
            members
        })
        .collect()
}

#[test]
fn no_crate_has_an_import_cycle_between_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut report = Vec::new();
    for krate in ["engine", "stages", "cache"] {
        for cycle in cycles_in(&root.join(krate).join("src")) {
            report.push(format!("{krate}: {}", cycle.join(" ↔ ")));
        }
    }
    assert!(
        report.is_empty(),
        "files that import each other (directly or around a loop):\n{}",
        report.join("\n")
    );
}

/// The checker itself finds a cycle and ignores test modules.
#[test]
fn the_checker_sees_a_cycle_and_ignores_tests() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "pub mod x;\n").unwrap();
    std::fs::write(src.join("a/x.rs"), "use crate::b::thing;\npub fn f() { thing() }\n").unwrap();
    std::fs::write(src.join("b.rs"), "pub fn thing() {}\n#[cfg(test)]\nmod tests { use crate::a::x::f; }\n")
        .unwrap();
    assert!(cycles_in(src).is_empty());
    std::fs::write(src.join("b.rs"), "pub fn thing() { super::a::x::f() }\n").unwrap();
    assert_eq!(cycles_in(src), vec![vec!["a/x.rs".to_string(), "b.rs".to_string()]]);
}
