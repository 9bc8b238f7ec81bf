//! The layering DESIGN.md draws, checked from the files: `proto` ← `node` ← (`depot-cache`,
//! `vehicle-peer`, `origin`) ← (`netsim`, `tests`), with `delta` beside `node` on `proto`.
//! - No role crate names another role, or a crate above the roles, in any dependency table of
//!   its `Cargo.toml` (normal, dev or build): its tests neither.
//! - `proto` names no `node`, no role, no tokio and no libp2p (it does no I/O); `delta` names no
//!   `node` and no role; `node` names no role.
//! - No crate's `src/` has a circle of module imports: the edges are the `crate::<module>` paths
//!   in its code (comments and string literals skipped) between its top-level modules.
//!
//! Each failure names the crates or the circle. The checkers are tested on made-up input too,
//! so that a checker that can no longer fail is noticed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The roles: each runs on its own kind of machine and depends on none of the others.
const ROLES: [&str; 3] = ["depot-cache", "vehicle-peer", "origin"];

/// The crates that depend on the roles: naming one is depending on every role.
const ABOVE_ROLES: [&str; 2] = ["netsim", "depotmesh-tests"];

/// A dependency a crate must not name, and why.
#[derive(Debug, Clone, Copy)]
enum Forbidden {
    /// This crate.
    Crate(&'static str),
    /// This crate and the crates of its family (`tokio`, `tokio-util`, …).
    Family(&'static str),
}

impl Forbidden {
    fn matches(self, dependency: &str) -> bool {
        match self {
            Self::Crate(name) => dependency == name,
            Self::Family(name) => {
                dependency == name
                    || dependency
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('-'))
            }
        }
    }
}

/// What `crate_name` must not name, each with the rule it breaks.
fn forbidden(crate_name: &str) -> Vec<(Forbidden, &'static str)> {
    let roles_and_above = || {
        ROLES
            .iter()
            .chain(&ABOVE_ROLES)
            .copied()
            .filter(|name| *name != crate_name)
            .map(Forbidden::Crate)
    };
    if ROLES.contains(&crate_name) {
        roles_and_above()
            .map(|rule| (rule, "a role crate depends on no other role"))
            .collect()
    } else if crate_name == "proto" {
        roles_and_above()
            .chain([
                Forbidden::Crate("node"),
                Forbidden::Family("tokio"),
                Forbidden::Family("libp2p"),
            ])
            .map(|rule| (rule, "proto does no I/O and sits under every other crate"))
            .collect()
    } else if crate_name == "delta" {
        roles_and_above()
            .chain([Forbidden::Crate("node")])
            .map(|rule| (rule, "delta sits on proto alone, under node and the roles"))
            .collect()
    } else if crate_name == "node" {
        roles_and_above()
            .map(|rule| (rule, "node sits under the roles"))
            .collect()
    } else {
        Vec::new()
    }
}

/// Every dependency `manifest` names: (its table, the package's name).
fn dependencies(manifest: &toml::Table) -> Vec<(String, String)> {
    const TABLES: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut tables: Vec<(String, &toml::Table)> = TABLES
        .iter()
        .filter_map(|table| Some(((*table).to_string(), manifest.get(*table)?.as_table()?)))
        .collect();
    // `[target.'cfg(…)'.dependencies]` and the like.
    for (target, value) in manifest
        .get("target")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
    {
        for table in TABLES {
            if let Some(deps) = value.get(table).and_then(toml::Value::as_table) {
                tables.push((format!("target.{target}.{table}"), deps));
            }
        }
    }
    let mut found = Vec::new();
    for (table, deps) in tables {
        for (key, value) in deps {
            // `alias = { package = "real-name", … }` depends on `real-name`.
            let package = value
                .get("package")
                .and_then(toml::Value::as_str)
                .unwrap_or(key);
            found.push((table.clone(), package.to_string()));
        }
    }
    found
}

/// What is wrong with the dependencies of `crate_name` (manifest at `path`), one line each.
fn layer_violations(crate_name: &str, path: &str, manifest: &toml::Table) -> Vec<String> {
    let rules = forbidden(crate_name);
    let mut wrong = Vec::new();
    for (table, dependency) in dependencies(manifest) {
        if let Some((_, why)) = rules.iter().find(|(rule, _)| rule.matches(&dependency)) {
            wrong.push(format!(
                "{crate_name} names {dependency} in [{table}] of {path}: {why}"
            ));
        }
    }
    wrong
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    text.parse()
        .unwrap_or_else(|error| panic!("parsing {}: {error}", path.display()))
}

/// The workspace's members: (package name, directory).
fn members() -> Vec<(String, PathBuf)> {
    let root = workspace_root();
    let workspace = read_toml(&root.join("Cargo.toml"));
    workspace["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .map(|member| {
            let dir = root.join(member.as_str().expect("a member is a path"));
            let manifest = read_toml(&dir.join("Cargo.toml"));
            let name = manifest["package"]["name"]
                .as_str()
                .expect("package.name")
                .to_string();
            (name, dir)
        })
        .collect()
}

#[test]
fn no_role_depends_on_another_and_the_layers_below_stay_below() {
    let members = members();
    let names: BTreeSet<&str> = members.iter().map(|(name, _)| name.as_str()).collect();
    // A crate renamed or moved would make its rules pass without reading anything.
    for expected in ["proto", "delta", "node"].iter().chain(&ROLES) {
        assert!(
            names.contains(expected),
            "no workspace member {expected}: {names:?}"
        );
    }
    let root = workspace_root();
    let mut wrong = Vec::new();
    for (name, dir) in &members {
        let path = dir.join("Cargo.toml");
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        wrong.extend(layer_violations(name, &shown, &read_toml(&path)));
    }
    assert!(
        wrong.is_empty(),
        "dependencies that break the layering (DESIGN.md, \"Layout\"):\n{}",
        wrong.join("\n")
    );
}

/// `text` with comments and the insides of string and character literals blanked out (lines
/// kept), so that what is left is code.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let mut i = 0;
    // Blanks `chars[from..to]`, keeping line breaks.
    let blank = |code: &mut String, from: usize, to: usize| {
        for &c in &chars[from..to.min(chars.len())] {
            code.push(if c == '\n' { '\n' } else { ' ' });
        }
    };
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            let end = rest
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |n| i + n);
            blank(&mut code, i, end);
            i = end;
        } else if rest.starts_with(&['/', '*']) {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0usize, i);
            while j < chars.len() {
                if chars[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if chars[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut code, i, j);
            i = j;
        } else if let Some(end) = raw_string_end(&chars, i) {
            blank(&mut code, i, end);
            i = end;
        } else if chars[i] == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut code, i, j + 1);
            i = j + 1;
        } else if chars[i] == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or else a lifetime or label.
            // An escape is `\` and at least one more character before the closing quote.
            let end = if chars.get(i + 1) == Some(&'\\') {
                chars
                    .get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&c| c == '\''))
                    .map(|n| i + 3 + n + 1)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    blank(&mut code, i, end);
                    i = end;
                }
                None => {
                    code.push('\'');
                    i += 1;
                }
            }
        } else {
            code.push(chars[i]);
            i += 1;
        }
    }
    code
}

/// Where the raw string literal starting at `chars[i]` (`r"…"`, `r#"…"#`, `br"…"`) ends, if one
/// starts there.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let ident = |c: &char| c.is_alphanumeric() || *c == '_';
    if i > 0 && ident(&chars[i - 1]) {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    let closing: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    let body = j + 1;
    (body..chars.len())
        .find(|&k| chars[k..].starts_with(&closing))
        .map(|k| k + closing.len())
}

/// The first names of the `crate::` paths in `code`: `crate::a::b` gives `a`; `crate::{a::b,
/// c}` gives `a` and `c`.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The names that start the group's items: at depth one, after `{` or `,`.
            let (mut depth, mut expect_name) = (1usize, true);
            let mut chars = group.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if expect_name && depth == 1 && ident(c) => {
                        let end = group[i..]
                            .find(|c: char| !ident(c))
                            .map_or(group.len(), |n| i + n);
                        names.push(group[i..end].to_string());
                        expect_name = false;
                        while chars.peek().is_some_and(|&(j, _)| j < end) {
                            chars.next();
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
            if end > 0 {
                names.push(rest[..end].to_string());
            }
        }
    }
    names
}

/// The top-level modules of the crate whose sources are in `src` (`x.rs` or `x/`; not
/// `lib.rs`, `main.rs` or `bin/`, which are crate roots) and the modules each one imports.
fn module_edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "bin" {
                files.entry(name).or_default().extend(rust_files(&path));
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            files.entry(name).or_default().push(path);
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .into_iter()
        .map(|(module, paths)| {
            let mut imports = BTreeSet::new();
            for path in paths {
                let code = code_only(&std::fs::read_to_string(&path).unwrap());
                imports.extend(
                    crate_paths(&code)
                        .into_iter()
                        .filter(|name| *name != module && modules.contains(name)),
                );
            }
            (module, imports)
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

/// One circle of each group of modules that import each other (a strongly connected component
/// of two or more), as the path `a → b → … → a`.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Modules that reach each other: `b` is in `a`'s group when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(module) = todo.pop() {
            for next in edges.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|module| (module, reach(module))).collect();
    let mut grouped = BTreeSet::new();
    let mut found = Vec::new();
    for module in edges.keys() {
        if grouped.contains(module) || !reaches[module].contains(module) {
            continue;
        }
        let group: BTreeSet<String> = reaches[module]
            .iter()
            .filter(|other| reaches[other].contains(module))
            .cloned()
            .collect();
        grouped.extend(group.iter().cloned());
        found.push(circle_through(module, &group, edges));
    }
    found
}

/// The shortest circle from `start` back to it inside `group` (breadth first).
fn circle_through(
    start: &str,
    group: &BTreeSet<String>,
    edges: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut came_from: BTreeMap<String, String> = BTreeMap::new();
    let mut frontier = vec![start.to_string()];
    while !frontier.is_empty() {
        let mut next_frontier = Vec::new();
        for module in frontier {
            for next in edges.get(&module).into_iter().flatten() {
                if !group.contains(next) {
                    continue;
                }
                if next == start {
                    let mut path = vec![start.to_string()];
                    let mut at = module.clone();
                    while at != start {
                        path.push(at.clone());
                        at = came_from[&at].clone();
                    }
                    path.push(start.to_string());
                    path.reverse();
                    return path;
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next.clone(), module.clone());
                    next_frontier.push(next.clone());
                }
            }
        }
        frontier = next_frontier;
    }
    unreachable!("{start} is in a group of modules that reach each other")
}

#[test]
fn no_crate_has_a_module_import_circle() {
    let mut wrong = Vec::new();
    for (name, dir) in members() {
        for circle in circles(&module_edges(&dir.join("src"))) {
            wrong.push(format!("{name}: {}", circle.join(" → ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "module import circles (a module imports, through `crate::` paths, one that imports it back):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checks_fail_on_what_they_forbid() {
    let manifest: toml::Table = r#"
        [package]
        name = "depot-cache"
        [dependencies]
        node = { path = "../node" }
        [dev-dependencies]
        vehicle = { package = "vehicle-peer", path = "../vehicle-peer" }
        [target.'cfg(unix)'.build-dependencies]
        depotmesh-tests = { path = "../tests" }
    "#
    .parse()
    .unwrap();
    assert_eq!(
        layer_violations("depot-cache", "depot-cache/Cargo.toml", &manifest),
        [
            "depot-cache names vehicle-peer in [dev-dependencies] of depot-cache/Cargo.toml: a role crate depends on no other role",
            "depot-cache names depotmesh-tests in [target.cfg(unix).build-dependencies] of depot-cache/Cargo.toml: a role crate depends on no other role",
        ]
    );
    let manifest: toml::Table = "[dependencies]\ntokio-util = \"0.7\"\ntokio_like = \"1\"\nlibp2p = \"0.57\"\nnode = \"0\"\n"
        .parse()
        .unwrap();
    let wrong = layer_violations("proto", "proto/Cargo.toml", &manifest);
    assert_eq!(wrong.len(), 3, "{wrong:?}");
    for named in ["tokio-util", "libp2p", "node"] {
        let line = format!("proto names {named} in [dependencies]");
        assert!(wrong.iter().any(|w| w.starts_with(&line)), "{wrong:?}");
    }
    let wrong = layer_violations("delta", "delta/Cargo.toml", &manifest);
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].starts_with("delta names node"), "{wrong:?}");
    assert!(layer_violations("netsim", "netsim/Cargo.toml", &manifest).is_empty());

    let src = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = src.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "lib.rs",
        "pub mod a; pub mod b; pub mod c; pub mod d; use crate::a::x;",
    );
    write("a.rs", "use crate::b::f; // crate::d::g\n");
    write("b/mod.rs", "mod inner;\n");
    write(
        "b/inner.rs",
        "use crate::{\n    c::{self, h},\n    a::x,\n};\nfn f() { let _ = \"crate::d\"; let _ = r#\"crate::d\"#; let _ = '\"'; }\n",
    );
    write(
        "c.rs",
        "/* crate::d /* nested */ crate::d */ fn h() { crate::self_check(); }\n",
    );
    write(
        "d.rs",
        "fn g<'a>(x: &'a str) -> &'a str { crate::a::x(x) }\n",
    );
    write("bin/tool.rs", "use crate::d;\n");
    let edges = module_edges(src.path());
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["a", "c"]),
        ("c", vec![]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(module, to)| (module.into(), to.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(edges, expected);
    assert_eq!(circles(&edges), [["a", "b", "a"]]);
    write("c.rs", "use crate::d;\n");
    write("a.rs", "use crate::c;\n");
    assert_eq!(circles(&module_edges(src.path())), [["a", "c", "d", "a"]]);
}
