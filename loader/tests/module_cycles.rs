//! No module cycles in the loader or the filter: if module `a` names module `b` (a `crate::`,
//! `super::` or `self::` path, or a sibling reached through `use super::*`), then `b` does not
//! name `a`, directly or through others. A module and its ancestors may name each other (a parent
//! declares and re-exports its children, children use what their parent shares).
//!
//! The graph comes from the source text (comments, strings and `#[cfg(test)]` code left out),
//! so a name that reaches a sibling's item only through the parent's glob re-export is not seen;
//! every module path written out is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

#[test]
fn the_loader_has_no_module_cycles() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

#[test]
fn the_filter_has_no_module_cycles() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../filter/src"));
}

/// The checker finds the cycles it is meant to find.
#[test]
fn a_cycle_is_found_and_parents_may_name_children() {
    let text = clean;
    let mut modules = BTreeMap::new();
    modules.insert(module("a"), text("use crate::b::x; fn f() { super::c::y(); }"));
    modules.insert(module("b"), text("// crate::a\nuse crate::c::{self, z};"));
    modules.insert(module("c"), text("fn g() { let s = \"crate::a\"; }"));
    modules.insert(module("d"), text("use crate::d::e;"));
    modules.insert(module("d::e"), text("use super::*; fn f() { f::x(); }"));
    modules.insert(module("d::f"), text("use crate::d;"));
    assert_eq!(find_cycle(&graph(&modules)), None);
    modules.insert(module("c"), text("use crate::{b, d::{e::q}};"));
    assert_eq!(find_cycle(&graph(&modules)), Some(vec![module("b"), module("c"), module("b")]));
    modules.insert(module("c"), text("use crate::d::e::q;"));
    modules.insert(module("d::f"), text("use super::*; fn f() { e::x(); }"));
    let cycle = find_cycle(&graph(&modules)).expect("d::e -> d::f -> d::e");
    assert_eq!(cycle, [module("d::e"), module("d::f"), module("d::e")]);
}

fn module(path: &str) -> Module {
    path.split("::").map(str::to_string).collect()
}

fn assert_acyclic(src: &Path) {
    let modules = read_modules(src);
    assert!(modules.len() > 5, "read {} modules under {}", modules.len(), src.display());
    if let Some(cycle) = find_cycle(&graph(&modules)) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        panic!("module cycle under {}: {}", src.display(), names.join(" -> "));
    }
}

/// Every module of the library crate rooted at `src/lib.rs`, with its cleaned text. Binaries
/// (`main.rs`, `bin/`) are crates of their own.
fn read_modules(src: &Path) -> BTreeMap<Module, String> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut modules = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap().with_extension("");
        let mut path: Module =
            relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
        if path[0] == "bin" || path == ["main"] {
            continue;
        }
        if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
            path.pop();
        }
        modules.insert(path, clean(&std::fs::read_to_string(&file).unwrap()));
    }
    // Modules declared `#[cfg(test)] mod name;` are test code, with everything under them.
    let test_only: Vec<Module> = modules
        .iter()
        .flat_map(|(path, text)| {
            text.match_indices("#[cfg(test)]").filter_map(move |(at, _)| {
                let rest = text[at + "#[cfg(test)]".len()..].trim_start();
                let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
                let name = rest.strip_prefix("mod ")?.split(';').next()?;
                let is_ident = name.chars().all(|c| c.is_alphanumeric() || c == '_');
                is_ident.then(|| path.iter().cloned().chain([name.to_string()]).collect())
            })
        })
        .collect();
    modules.retain(|path, _| !test_only.iter().any(|t| path.starts_with(t)));
    for text in modules.values_mut() {
        *text = without_test_items(text);
    }
    modules
}

/// Source text without comments, with string and char literals emptied.
fn clean(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !chars.get(i.wrapping_sub(1)).is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // Raw string r"..." or r#"..."#.
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let closing: String =
                std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let closing: Vec<char> = closing.chars().collect();
            while j < chars.len() && !chars[j..].starts_with(&closing) {
                j += 1;
            }
            out.push_str("\"\"");
            i = j + closing.len();
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            out.push_str("' '");
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Drops each item marked `#[cfg(test)]` (up to its matching brace, or its `;`).
fn without_test_items(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(open), semicolon) if semicolon.is_none_or(|s| open < s) => {
                let mut depth = 0;
                let mut end = item.len();
                for (k, c) in item[open..].char_indices() {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                end
            }
            (_, Some(semicolon)) => semicolon + 1,
            _ => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Module -> the modules it names (ancestors and descendants left out).
fn graph(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut edges = BTreeMap::new();
    for (path, text) in modules {
        let mut named = BTreeSet::new();
        for target in paths(path, text) {
            // The longest prefix of the path that is a module.
            if let Some(found) =
                (1..=target.len()).rev().map(|n| &target[..n]).find(|p| modules.contains_key(*p))
            {
                named.insert(found.to_vec());
            }
        }
        // Siblings reached by name through `use super::*`.
        if text.contains("use super::*;") && !path.is_empty() {
            let parent = &path[..path.len() - 1];
            for sibling in modules.keys().filter(|m| m.len() == path.len() && m.starts_with(parent))
            {
                let name = format!("{}::", sibling.last().unwrap());
                let mut from = 0;
                while let Some(at) = text[from..].find(&name) {
                    let at = from + at;
                    let before = text[..at].chars().next_back();
                    if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                        named.insert(sibling.clone());
                    }
                    from = at + name.len();
                }
            }
        }
        named.retain(|m| !m.starts_with(path) && !path.starts_with(m));
        edges.insert(path.clone(), named);
    }
    edges
}

/// Every `crate::`, `super::` and `self::` path in `text`, made absolute from module `at`,
/// with `{a, b::c}` groups expanded.
fn paths(at: &Module, text: &str) -> Vec<Module> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(start) {
            let begin = from + found;
            from = begin + start.len();
            if begin > 0 && (is_ident(bytes[begin - 1]) || bytes[begin - 1] == b':') {
                continue;
            }
            let mut base: Module = at.clone();
            let mut i = begin;
            // Leading `crate::`, `self::` and any number of `super::`.
            loop {
                let rest = &text[i..];
                if let Some(r) = rest.strip_prefix("crate::") {
                    base.clear();
                    i = text.len() - r.len();
                } else if let Some(r) = rest.strip_prefix("super::") {
                    base.pop();
                    i = text.len() - r.len();
                } else if let Some(r) = rest.strip_prefix("self::") {
                    i = text.len() - r.len();
                } else {
                    break;
                }
            }
            expand(text, i, base, &mut out);
        }
    }
    out
}

/// The path (or `{...}` group of paths) starting at byte `i`, appended to `base`.
fn expand(text: &str, mut i: usize, mut base: Module, out: &mut Vec<Module>) {
    let bytes = text.as_bytes();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'{') {
            // Split the group at top-level commas.
            let mut depth = 0;
            let mut part_start = i + 1;
            for (k, &b) in bytes.iter().enumerate().skip(i) {
                match b {
                    b'{' => depth += 1,
                    b'}' | b',' if depth == 1 => {
                        expand(text, part_start, base.clone(), out);
                        part_start = k + 1;
                        if b == b'}' {
                            return;
                        }
                    }
                    b'}' => depth -= 1,
                    _ => {}
                }
            }
            return;
        }
        let end =
            i + bytes[i..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
        if end == i {
            break;
        }
        match &text[i..end] {
            "self" => {}
            "super" => {
                base.pop();
            }
            segment => base.push(segment.to_string()),
        }
        if text[end..].starts_with("::") {
            i = end + 2;
        } else {
            break;
        }
    }
    out.push(base);
}

/// A cycle (first module repeated at the end), if any.
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        marks.insert(node.clone(), Mark::Active);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Active) => {
                    let from = stack.iter().position(|m| m == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, marks, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        if !marks.contains_key(node) {
            if let Some(cycle) = visit(node, edges, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}
