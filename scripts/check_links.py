#!/usr/bin/env python3
"""Checks that every relative link in every tracked Markdown file points into the repository.

usage: check_links.py [FILE.md ...]   (default: every Markdown file git tracks)
A link is `[text](target)`, `![alt](target)` or a reference definition `[id]: target`, outside
code blocks and code spans. Links with a scheme (https:, mailto:) and bare anchors (#part) are
skipped; of the others, the part before any '#' or '?' must name a file git tracks, or a
folder holding one, inside the repository (so the check passes in a fresh clone, not only in a
work tree with ignored or neighbouring files). Anchors themselves are not checked.
Prints each broken link as FILE:LINE: TARGET (why) and exits 1 if there is any."""
import os, re, subprocess, sys
from urllib.parse import unquote

INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+\"[^\"]*\"|\s+'[^']*')?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def repository_files(root):
    out = subprocess.run(["git", "-C", root, "ls-files", "-z"], capture_output=True, check=True).stdout
    files = {os.path.normpath(p) for p in out.decode().split("\0") if p}
    folders = {os.path.dirname(f) for f in files}
    for folder in list(folders):
        while folder:
            folder = os.path.dirname(folder)
            folders.add(folder)
    return files, folders


def links(text):
    """(line number, target) of every link outside code."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        line = CODE_SPAN.sub("", line)
        for match in INLINE.finditer(line):
            yield number, match.group(1)
        reference = REFERENCE.match(line)
        if reference:
            yield number, reference.group(1)


def problem(source, target, root, files, folders):
    """Why `target`, linked from `source` (relative to root), is broken; None if it is fine."""
    target = target.strip("<>")
    if not target or target.startswith("#") or SCHEME.match(target):
        return None
    path = unquote(re.split(r"[#?]", target, maxsplit=1)[0])
    if path.startswith("/"):
        return "an absolute path; link relative to the file"
    resolved = os.path.normpath(os.path.join(os.path.dirname(source), path))
    if resolved == ".." or resolved.startswith("../"):
        return "outside the repository"
    if resolved in files or resolved in folders:
        return None
    if os.path.exists(os.path.join(root, resolved)):
        return f"{resolved} exists here but git does not track it"
    return f"{resolved} does not exist"


def main(args):
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
    files, folders = repository_files(root)
    if args:
        sources = [os.path.relpath(os.path.abspath(a), root) for a in args]
    else:
        sources = sorted(f for f in files if f.lower().endswith((".md", ".markdown")))
    broken, checked = 0, 0
    for source in sources:
        with open(os.path.join(root, source), encoding="utf-8") as f:
            text = f.read()
        for number, target in links(text):
            checked += 1
            why = problem(source, target, root, files, folders)
            if why:
                broken += 1
                print(f"{source}:{number}: {target} ({why})")
    if broken:
        print(f"{broken} broken link(s) of {checked} in {len(sources)} Markdown file(s)")
        return 1
    print(f"{checked} links in {len(sources)} Markdown file(s) point to files in the repository")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
