#!/usr/bin/env python3
"""Writes the module graph of docs/ARCHITECTURE.md from Package.swift, or checks it is current.

usage: check_architecture.py [--check]
Reads every target of Package.swift (name, kind, dependencies: targets, and products of other
packages) and writes the graph between the `<!-- module-graph -->` and `<!-- /module-graph -->`
markers of docs/ARCHITECTURE.md. With --check nothing is written: it exits 1, printing what
differs, when the graph there is not what Package.swift gives, or when a target has no row in
the module table below it (a row whose first cell names it: "| `NAME` |" or "| `A`, `B` |")."""
import difflib, os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DOC = os.path.join(ROOT, "docs", "ARCHITECTURE.md")
BEGIN, END = "<!-- module-graph -->", "<!-- /module-graph -->"
KINDS = {"target": "", "executableTarget": "executable", "systemLibrary": "system library", "testTarget": "test"}


def balanced(text, start):
    """The text from `start` (an opening bracket) to its matching closing bracket, inclusive."""
    pairs, depth = {"(": ")", "[": "]"}, []
    for i in range(start, len(text)):
        c = text[i]
        if c in pairs:
            depth.append(pairs[c])
        elif depth and c == depth[-1]:
            depth.pop()
            if not depth:
                return text[start:i + 1]
    raise ValueError(f"Package.swift: unbalanced bracket at offset {start}")


def targets(package):
    """(name, kind, [dependency]) of every target, in manifest order; products as `X (package)`."""
    text = re.sub(r"//[^\n]*", "", package)
    out = []
    for m in re.finditer(r"\.(target|executableTarget|systemLibrary|testTarget)\(", text):
        call = balanced(text, m.end() - 1)
        name = re.search(r'name:\s*"([^"]+)"', call).group(1)
        deps = []
        d = re.search(r"dependencies:\s*\[", call)
        if d:
            items = balanced(call, d.end() - 1)
            for p in re.finditer(r'\.product\(\s*name:\s*"([^"]+)"\s*,\s*package:\s*"([^"]+)"\s*\)', items):
                deps.append((p.start(), f"{p.group(1)} ({p.group(2)})"))
            plain = re.sub(r"\.product\([^)]*\)", lambda s: " " * len(s.group(0)), items)
            for s in re.finditer(r'"([^"]+)"', plain):
                deps.append((s.start(), s.group(1)))
        out.append((name, KINDS[m.group(1)], [n for _, n in sorted(deps)]))
    return out


def graph(all_targets):
    """The generated section: one line per non-test target, `NAME -> DEPENDENCIES`."""
    modules = [t for t in all_targets if t[1] != "test" and not t[0].startswith("_")]
    width = max(len(n) for n, _, _ in modules) + 1
    lines = ["```"]
    for name, kind, deps in modules:
        line = name.ljust(width) + ("-> " + ", ".join(deps) if deps else "")
        if kind:
            line = (line + "   " if deps else line) + f"[{kind}]"
        lines.append(line.rstrip())
    lines.append("```")
    return "\n".join(lines)


def main():
    check = "--check" in sys.argv[1:]
    with open(os.path.join(ROOT, "Package.swift")) as f:
        found = targets(f.read())
    with open(DOC) as f:
        doc = f.read()
    if doc.count(BEGIN) != 1 or doc.count(END) != 1:
        sys.exit(f"docs/ARCHITECTURE.md: needs one {BEGIN} and one {END} marker around the module graph")
    head, rest = doc.split(BEGIN)
    current, tail = rest.split(END)
    wanted = "\n" + graph(found) + "\n"
    problems = []
    if current != wanted:
        diff = difflib.unified_diff(current.splitlines(), wanted.splitlines(), "docs/ARCHITECTURE.md", "Package.swift", lineterm="")
        problems.append("the module graph is stale; run scripts/check_architecture.py to rewrite it:\n" + "\n".join(diff))
    rows = {n for cell in re.findall(r"^\| (`[^|]+`) \|", tail, re.M) for n in re.findall(r"`([^`]+)`", cell)}
    missing = [n for n, kind, _ in found if kind != "test" and not n.startswith("_") and n not in rows]
    if missing:
        problems.append("targets without a row in the module table of docs/ARCHITECTURE.md: " + ", ".join(missing))
    if check:
        for p in problems:
            print(p)
        sys.exit(1 if problems else 0)
    with open(DOC, "w") as f:
        f.write(head + BEGIN + wanted + END + tail)
    for p in problems[1:] if current != wanted else problems:
        print(p)


if __name__ == "__main__":
    main()
