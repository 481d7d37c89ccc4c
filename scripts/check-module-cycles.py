#!/usr/bin/env python3
"""Fails when the top-level modules of a crate import each other in a circle.

    scripts/check-module-cycles.py crates/cortex-client crates/cortex-service

A module is `src/NAME.rs` together with `src/NAME/` (its submodules). An
edge A -> B is any path `crate::B` written in A's files (in `use` lines and
in code), and `super::B` in a top-level file `src/A.rs`. Comments are
ignored. Prints every circle (a strongly connected component of more than
one module) with the lines that make it, and exits 1 if there is one.
"""

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super)::(?:\{\s*)?([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\b(crate|super)::\{([^}]*)\}", re.S)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def modules_of(src):
    names = {p.stem for p in src.glob("*.rs") if p.stem not in ("lib", "main")}
    names |= {p.name for p in src.iterdir() if p.is_dir()}
    return names


def files_of(src, module):
    files = []
    if (src / f"{module}.rs").exists():
        files.append(src / f"{module}.rs")
    if (src / module).is_dir():
        files.extend(sorted((src / module).rglob("*.rs")))
    return files


def edges_of(src, modules):
    edges = {m: {} for m in modules}
    for module in modules:
        for path in files_of(src, module):
            top_level = path.parent == src
            text = strip_comments(path.read_text())
            # `#[cfg(test)] mod tests { ... }` at the end of a file may use
            # anything; tests are not part of the layering.
            text = text.split("#[cfg(test)]\nmod tests", 1)[0]
            found = []
            for m in PATH.finditer(text):
                found.append((m.group(1), m.group(2), m.start()))
            for g in GROUP.finditer(text):
                for item in g.group(2).split(","):
                    name = item.strip().split("::")[0].split(" ")[0]
                    if name:
                        found.append((g.group(1), name, g.start()))
            for kind, target, at in found:
                if kind == "super" and not top_level:
                    continue
                if target in modules and target != module:
                    line = text.count("\n", 0, at) + 1
                    edges[module].setdefault(target, f"{path}:{line}")
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(crates):
    failed = False
    for crate in crates:
        src = Path(crate) / "src"
        modules = modules_of(src)
        edges = edges_of(src, modules)
        found = cycles(edges)
        for component in found:
            failed = True
            print(f"{crate}: modules in a circle: {', '.join(component)}")
            for a in component:
                for b, where in sorted(edges[a].items()):
                    if b in component:
                        print(f"  {a} -> {b}  ({where})")
        if not found:
            print(f"{crate}: {len(modules)} modules, no circle")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["."]))
