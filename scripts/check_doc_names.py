#!/usr/bin/env python3
"""Checks that the commands, subcommands, options, configs and scripts the Markdown files name exist.

usage: check_doc_names.py TESSERA [FILE.md ...]   (default: every Markdown file git tracks)
A `tessera CMD [SUB]` (also `$B CMD`, `.build/release/tessera CMD`, `scripts/mpirun.sh N CMD`,
`tessera launch ... -- CMD`) must name a command the executable lists in its --help, and SUB a
subcommand when CMD has subcommands; every `--option` written after it on the same line, up to
a `#` comment, `|`, `;` or the end of a code span, must be one its --help lists (or a --set
key=value). `configs/NAME.yaml` and `scripts/NAME` must be files git tracks.
Prints each unknown name as FILE:LINE: NAME (why) and exits 1 if there is any."""
import re, subprocess, sys

tessera = sys.argv[1] if len(sys.argv) > 1 else ".build/release/tessera"   # usage: check_doc_names.py [TESSERA] [FILE.md ...]
root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
tracked = set(subprocess.run(["git", "-C", root, "ls-files"], capture_output=True, text=True, check=True).stdout.split())
files = sys.argv[2:] or sorted(f for f in tracked if f.endswith(".md"))

def help_of(words):
    out = subprocess.run([tessera, *words, "--help"], capture_output=True, text=True)
    return out.stdout

def subcommands(text):
    names, on = [], False
    for line in text.splitlines():
        if line.startswith("SUBCOMMANDS:"):
            on = True
        elif on and re.match(r"^  [a-z]", line):
            names.append(line.split()[0])
        elif on and line and not line.startswith(" "):
            on = False
    return names

def options(text):
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text))

top = help_of([])
commands = {name: help_of([name]) for name in subcommands(top)}
nested = {name: {sub: help_of([name, sub]) for sub in subcommands(text)} for name, text in commands.items()}

INVOCATION = re.compile(r"(?:(?<![\w/.-])tessera|\$B|\.build/release/tessera|scripts/mpirun\.sh \d+|launch [^`|;#]*?--)\s+([a-z][a-z-]*)((?:\s+[^\s`|;#]+)*)")
PATHS = re.compile(r"((?:configs|scripts)/[A-Za-z0-9_./-]+)")
problems = []
for name in files:
    for number, line in enumerate(open(name if name.startswith("/") else f"{root}/{name}", encoding="utf-8"), 1):
        for path in PATHS.findall(line):
            path = path.rstrip(".,:)")
            if path.endswith("/") or "*" in path or path in ("scripts/bench", "configs"):
                continue
            if path not in tracked and not any(f.startswith(path + "/") for f in tracked):
                problems.append(f"{name}:{number}: {path} (no such file in the repository)")
        for command, rest in INVOCATION.findall(line):
            if command not in commands:
                if command in ("is", "and", "or", "the", "a", "runs", "on", "alone", "binary", "itself", "process"):
                    continue   # prose: "tessera is ...", "tessera alone"
                problems.append(f"{name}:{number}: tessera {command} (not a tessera command)")
                continue
            words = rest.split()
            text = commands[command]
            if nested[command] and words and not words[0].startswith("-"):
                sub = words[0].rstrip('",).:')
                if not re.fullmatch(r"[a-z][a-z0-9-]*", sub):
                    continue   # a placeholder (NAME, ...) or a list (list|show|verify)
                if sub not in nested[command]:
                    hidden = help_of([command, sub])   # a subcommand --help does not list
                    if not hidden.startswith("USAGE") and "USAGE: tessera" not in hidden:
                        problems.append(f"{name}:{number}: tessera {command} {sub} (not a subcommand of tessera {command})")
                        continue
                    nested[command][sub] = hidden
                text = nested[command][sub]
            known = options(text)
            for word in words:
                if word == "--":
                    break
                option = word.split("=")[0]
                if option.startswith("--") and len(option) > 2 and option not in known:
                    problems.append(f"{name}:{number}: tessera {command} {option} (not an option of it)")
for problem in problems:
    print(problem)
print(f"{len(problems)} unknown name(s) in {len(files)} Markdown file(s)")
sys.exit(1 if problems else 0)
