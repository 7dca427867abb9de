//! The graph of kubepulse's top-level modules (`src/<module>.rs` or
//! `src/<module>/`): an edge A → B for every `crate::B` path written in a
//! file of module A, in code, `use` lines and doc links alike (a doc link
//! is a dependency a reader follows too). The test at the bottom keeps it
//! free of cycles, so the tree reads as layers (STYLE.md, "Layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::{read, Error};

/// One `crate::<to>` path in a file of module `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The module whose file names the path.
    pub from: String,
    /// The top-level module the path names.
    pub to: String,
    /// Where: the file (relative to `src/`) and line.
    pub site: String,
}

/// The top-level modules declared in `lib_rs` (`mod name;` lines, whatever
/// their visibility and attributes).
pub fn declared_modules(lib_rs: &str) -> BTreeSet<String> {
    lib_rs
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("mod ")?;
            let before = &line[..line.len() - rest.len() - 4];
            // `mod` as a word: at the start of the line, or after `pub`,
            // `pub(crate)` or an attribute.
            if !(before.trim().is_empty() || before.ends_with(' ')) {
                return None;
            }
            let name = rest.strip_suffix(';')?.trim();
            (!name.is_empty() && name.chars().all(is_ident)).then(|| name.to_string())
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules that `text` names as `crate::<module>`, each with
/// its line number. `crate::{a::x, b}` names `a` and `b`; `$crate::` (a
/// macro's own path, expanded where the macro is used) names nothing.
pub fn named_modules(text: &str, modules: &BTreeSet<String>) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let prev = text[..i].chars().next_back();
        if prev.is_some_and(|c| is_ident(c) || c == '$') {
            continue;
        }
        let line = text[..i].matches('\n').count() + 1;
        let rest = &text[i + "crate::".len()..];
        let names = match rest.strip_prefix('{') {
            Some(group) => group_heads(group),
            None => vec![leading_ident(rest)],
        };
        for name in names {
            if modules.contains(name) {
                out.push((name.to_string(), line));
            }
        }
    }
    out
}

fn leading_ident(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The first name of every item of a `{...}` use group (`group` starts
/// after the opening brace), up to its closing brace.
fn group_heads(group: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start => {
                heads.push(leading_ident(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level modules of a crate and the edges between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Every module `lib.rs` declares.
    pub modules: BTreeSet<String>,
    /// Every `crate::` path from one of them to another, in file order.
    pub edges: Vec<Edge>,
}

/// Scans the crate whose sources are in `src` (`lib.rs` and `main.rs`, the
/// roots, are not modules).
pub fn scan(src: &Path) -> Result<Scan, Error> {
    let modules = declared_modules(&read(&src.join("lib.rs"))?);
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    files.sort();
    let mut edges = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let Some(first) = rel.components().next() else {
            continue;
        };
        let first = first.as_os_str().to_string_lossy();
        let from = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if !modules.contains(&from) {
            continue;
        }
        let rel = rel.to_string_lossy();
        for (to, line) in named_modules(&read(&file)?, &modules) {
            if to != from {
                edges.push(Edge {
                    from: from.clone(),
                    to,
                    site: format!("{rel}:{line}"),
                });
            }
        }
    }
    Ok(Scan { modules, edges })
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Module → the modules it names, each with the first site naming it.
type Graph<'a> = BTreeMap<&'a str, BTreeMap<&'a str, &'a str>>;

fn graph(edges: &[Edge]) -> Graph<'_> {
    let mut g: Graph<'_> = BTreeMap::new();
    for e in edges {
        g.entry(&e.from)
            .or_default()
            .entry(&e.to)
            .or_insert(&e.site);
        g.entry(&e.to).or_default();
    }
    g
}

/// The cycles of the graph: one line per group of modules that reach each
/// other (a strongly connected component), naming the modules and every
/// edge among them with its first site. Empty when the graph is a DAG.
pub fn cycles(edges: &[Edge]) -> Vec<String> {
    let g = graph(edges);
    strongly_connected(&g)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|component| {
            let inside: BTreeSet<&str> = component.iter().copied().collect();
            let links: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    g[from]
                        .iter()
                        .filter(|(to, _)| inside.contains(*to))
                        .map(move |(to, site)| format!("{from} → {to} ({site})"))
                })
                .collect();
            format!(
                "cycle among {{{}}}: {}",
                component.join(", "),
                links.join("; ")
            )
        })
        .collect()
}

/// Tarjan's algorithm; components come out with their modules sorted.
fn strongly_connected<'a>(g: &Graph<'a>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        next: usize,
        index: BTreeMap<&'a str, (usize, usize)>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, g: &Graph<'a>, s: &mut State<'a>) {
        s.index.insert(v, (s.next, s.next));
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in g.get(v).into_iter().flat_map(BTreeMap::keys) {
            if !s.index.contains_key(w) {
                visit(w, g, s);
                let low_w = s.index[w].1;
                if let Some(e) = s.index.get_mut(v) {
                    e.1 = e.1.min(low_w);
                }
            } else if s.on_stack.contains(w) {
                let index_w = s.index[w].0;
                if let Some(e) = s.index.get_mut(v) {
                    e.1 = e.1.min(index_w);
                }
            }
        }
        if s.index[v].0 == s.index[v].1 {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            s.out.push(component);
        }
    }
    let mut s = State {
        next: 0,
        index: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(v, g, &mut s);
        }
    }
    s.out
}

/// The modules in layers, lowest first: a module's layer is one above the
/// highest module it names (0 when it names none). Only meaningful without
/// [`cycles`] (modules on a cycle are left out).
pub fn layers(modules: &BTreeSet<String>, edges: &[Edge]) -> Vec<Vec<String>> {
    let mut g = graph(edges);
    for m in modules {
        g.entry(m).or_default();
    }
    let mut layer: BTreeMap<&str, usize> = BTreeMap::new();
    // Repeated relaxation: the graph has a few dozen modules.
    let mut changed = true;
    let mut rounds = 0;
    while changed && rounds <= g.len() {
        changed = false;
        rounds += 1;
        for (from, tos) in &g {
            let l = tos
                .keys()
                .map(|to| layer.get(to).map_or(1, |l| l + 1))
                .max();
            let l = l.unwrap_or(0);
            if layer.get(from) != Some(&l) {
                layer.insert(from, l);
                changed = true;
            }
        }
    }
    let on_cycle: BTreeSet<&str> = strongly_connected(&g)
        .into_iter()
        .filter(|c| c.len() > 1)
        .flatten()
        .collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for (m, l) in layer {
        if on_cycle.contains(m) {
            continue;
        }
        if out.len() <= l {
            out.resize(l + 1, Vec::new());
        }
        out[l].push(m.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn edge(from: &str, to: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            site: format!("{from}.rs:1"),
        }
    }

    #[test]
    fn declared_modules_are_the_mod_lines_of_lib_rs() {
        let lib = "//! mod docs\npub mod auth;\npub(crate) mod http;\n#[allow(unsafe_code)]\npub mod sys;\n#[cfg(fuzzing)] pub mod fuzzing;\nmod plain;\npub use error::Error;\nfn module() {}\n";
        assert_eq!(
            declared_modules(lib),
            modules(&["auth", "http", "sys", "fuzzing", "plain"])
        );
    }

    #[test]
    fn paths_doc_links_and_use_groups_are_edges() {
        let m = modules(&["config", "peer", "plan", "metrics", "label_enum"]);
        let text = "use crate::config::Settings;\n\
                    /// See [`Peer`](crate::peer::Peer).\n\
                    use crate::{plan::NodePlan, metrics::{self, labels}};\n\
                    $crate::label_enum::x!();\n\
                    let x = kubepulse_crate::plan::y; crate::Error; crate::unknown::z;\n";
        let got = named_modules(text, &m);
        assert_eq!(
            got,
            vec![
                ("config".to_string(), 1),
                ("peer".to_string(), 2),
                ("plan".to_string(), 3),
                ("metrics".to_string(), 3),
            ]
        );
    }

    #[test]
    fn a_cycle_is_named_with_its_modules_and_sites() {
        let es = [
            edge("a", "b"),
            edge("b", "c"),
            edge("c", "a"),
            edge("c", "d"),
        ];
        let got = cycles(&es);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("cycle among {a, b, c}: "), "{}", got[0]);
        assert!(got[0].contains("c → a (c.rs:1)"), "{}", got[0]);
        assert!(!got[0].contains('d'), "{}", got[0]);
        let all = modules(&["a", "b", "c", "d", "e"]);
        assert_eq!(layers(&all, &es), vec![vec!["d".to_string(), "e".into()]]);
    }

    #[test]
    fn a_dag_has_no_cycle_and_layers_lowest_first() {
        let es = [
            edge("roles", "probe"),
            edge("probe", "peer"),
            edge("roles", "peer"),
        ];
        assert!(cycles(&es).is_empty());
        assert_eq!(
            layers(&modules(&["peer", "probe", "roles", "sys"]), &es),
            vec![
                vec!["peer".to_string(), "sys".into()],
                vec!["probe".into()],
                vec!["roles".into()]
            ]
        );
    }

    /// The real tree: no module reaches itself through others. A failure
    /// names the modules and the `crate::` paths that close the cycle.
    #[test]
    fn src_has_no_module_cycle() {
        let src = crate::repo_root().join("src");
        let scan = scan(&src).expect("read src/");
        assert!(
            scan.modules.contains("sys") && scan.edges.iter().any(|e| e.from == "roles"),
            "the scan found the modules and the roles' dependencies"
        );
        let found = cycles(&scan.edges);
        assert!(
            found.is_empty(),
            "src/ has module cycles (a lower module must not name a higher one; move the shared item down):\n{}",
            found.join("\n")
        );
    }
}
