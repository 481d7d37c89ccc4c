#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a circle, at any depth.

    scripts/check-module-cycles.py crates/cortex-client crates/cortex-service

The modules come from the file tree: `src/a.rs` or `src/a/mod.rs` is the
module `a`, and `src/a/b.rs` (or `src/a.rs` with `src/a/b.rs`) is `a::b`.
Every path written in a file (`crate::…`, `super::…`, `self::…`, in `use`
lines and in code, braces included) is resolved to the module it names.
A reference from module `g::x::…` to module `g::y::…` is an edge `x -> y`
among the children of `g`: siblings are what must not form a circle, at
the crate's top level and inside every module with children of its own (a
child may always use its parent's items, and a parent its children).
Comments, and a `#[cfg(test)] mod tests` at the end of a file, are ignored.
Prints every circle (a strongly connected component of more than one
sibling) with the lines that make it, and exits 1 if there is one.
"""

import re
import sys
from pathlib import Path

START = re.compile(r"\b(crate|super|self)::")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def module_tree(src):
    """Every module of the crate as a tuple path, with the files that are
    its own (not its children's), and the module path of each file."""
    files = {}
    for path in sorted(src.rglob("*.rs")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        if parts and parts[0] in ("bin",):
            continue
        files[path] = tuple(parts)
    modules = set(files.values())
    # A folder without `mod.rs` still makes the parent a module with children.
    for module in list(modules):
        for i in range(1, len(module)):
            modules.add(module[:i])
    modules.add(())
    return modules, files


def paths_in(text, at):
    """The paths starting at `at` (just after `crate::`, `super::` or
    `self::`): a list of (segments, offset) with braces expanded."""
    out = []

    def skip_space(i):
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def walk(i, prefix):
        i = skip_space(i)
        if i < len(text) and text[i] == "{":
            i += 1
            while True:
                i = skip_space(i)
                if i >= len(text) or text[i] == "}":
                    return i + 1
                i = walk(i, prefix)
                i = skip_space(i)
                if i < len(text) and text[i] == ",":
                    i += 1
        m = IDENT.match(text, i)
        if not m:
            if prefix:
                out.append(prefix)
            return i
        segments = prefix + [m.group(0)]
        i = m.end()
        if text.startswith("::", i):
            return walk(i + 2, segments)
        out.append(segments)
        return i

    walk(at, [])
    return out


def resolve(kind, segments, own):
    """The absolute path that `kind::segments` names, written in module
    `own`; `super::super::…` climbs once per `super`."""
    if kind == "crate":
        base = ()
    elif kind == "self":
        base = own
    else:
        base = own[:-1]
        while segments and segments[0] == "super":
            base = base[:-1]
            segments = segments[1:]
    return base + tuple(segments)


def edges_of(src):
    modules, files = module_tree(src)
    # edges[group][a][b] = "file:line"
    edges = {}
    for path, own in files.items():
        text = strip_comments(path.read_text())
        # `#[cfg(test)] mod tests { ... }` at the end of a file may use
        # anything; tests are not part of the layering.
        text = text.split("#[cfg(test)]\nmod tests", 1)[0]
        for start in START.finditer(text):
            for segments, in_path in [(s, start.start()) for s in paths_in(text, start.end())]:
                target = resolve(start.group(1), segments, own)
                # The longest prefix that is a module: what is named.
                while target and target not in modules:
                    target = target[:-1]
                common = 0
                while common < min(len(own), len(target)) and own[common] == target[common]:
                    common += 1
                if common == len(own) or common == len(target):
                    continue  # itself, a descendant, or an ancestor
                group = own[:common]
                a, b = own[common], target[common]
                line = text.count("\n", 0, in_path) + 1
                edges.setdefault(group, {}).setdefault(a, {}).setdefault(b, f"{path}:{line}")
    return modules, edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    nodes = set(edges) | {b for targets in edges.values() for b in targets}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main(crates):
    failed = False
    for crate in crates:
        src = Path(crate) / "src"
        modules, edges = edges_of(src)
        found = 0
        for group in sorted(edges):
            where = "::".join(("crate",) + group)
            for component in cycles(edges[group]):
                failed = True
                found += 1
                print(f"{crate}: modules of {where} in a circle: {', '.join(component)}")
                for a in component:
                    for b, at in sorted(edges[group].get(a, {}).items()):
                        if b in component:
                            print(f"  {a} -> {b}  ({at})")
        if not found:
            print(f"{crate}: {len(modules) - 1} modules, no circle")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["."]))
