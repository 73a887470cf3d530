"""The README and docs/*.md against the code: every `--flag` they name is a flag of the
command it is used with, every relative link (and its #anchor) reaches a file and heading
that exist, and the README stays short. The flags come from the entry points themselves
(`--helpfull` of train.py, sweep.py, predict.py, compare.py in this checkout), so a flag
renamed in the code fails here until the docs follow.
"""
import functools
import glob
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COMMANDS = ("train", "sweep", "predict", "compare")
README_MAX_LINES = 400

# Flags of other programs that the docs show next to tapefit's, by the program whose name
# must appear in the same command or code span (so they cannot hide a misspelt tapefit
# flag elsewhere).
FOREIGN = {
    "tensorboard": {"logdir", "logdir_spec"},
    "sbatch": {"array", "job-name", "gpus", "time", "requeue", "nodes", "ntasks-per-node",
               "gpus-per-node"},
}

FLAG = re.compile(r"(?<![\w-])--([A-Za-z][\w.-]*)")
# A flag an error message quotes as unknown (`error: unknown flag --lerning_rate (did you
# mean --learning_rate?)`) is misspelt on purpose.
QUOTED_UNKNOWN = re.compile(r"unknown flag --[A-Za-z][\w.-]*")
HELP_LINE = re.compile(r"^\s+(?:-\S,)?--(\[no\])?([A-Za-z][\w.-]*):")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TAPEFIT_COMMAND = re.compile(r"\btapefit (train|sweep|predict|compare)\b"
                             r"|\bpython (train|sweep|predict|compare)\.py\b")
BENCH_SCRIPT = re.compile(r"bench/(\w+)\.py")


def doc_files():
    docs = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [os.path.join(ROOT, "README.md"), *docs]


def rel(path):
    return os.path.relpath(path, ROOT)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---- the flags each entry point defines ---------------------------------------------------

@functools.lru_cache(maxsize=None)
def defined_flags(command):
    """(names, booleans) that `COMMAND.py --helpfull` lists (absl's own flags included)."""
    proc = subprocess.run([sys.executable, f"{command}.py", "--helpfull"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    names, booleans = set(), set()
    for line in proc.stdout.splitlines():
        match = HELP_LINE.match(line)
        if match:
            names.add(match.group(2))
            if match.group(1):
                booleans.add(match.group(2))
    assert "workdir" in names, f"{command}.py --helpfull listed no flags:\n{proc.stderr[-2000:]}"
    return frozenset(names), frozenset(booleans)


def is_flag_of(name, commands):
    for command in commands:
        names, booleans = defined_flags(command)
        if name in names or (name.startswith("no") and name[2:] in booleans):
            return True
    return False


@functools.lru_cache(maxsize=None)
def bench_flags(script):
    path = os.path.join(ROOT, "bench", f"{script}.py")
    if not os.path.exists(path):
        return frozenset()
    return frozenset(re.findall(r"add_argument\(\s*[\"']--([\w-]+)", read(path)))


# ---- where each flag is used --------------------------------------------------------------

def units(text):
    """(line number, text) of every command in a code block (a line and its `\\`
    continuations), every inline code span, and the prose around them."""
    out = []

    def line_of(offset):
        return text.count("\n", 0, offset) + 1

    def prose(start, end):
        chunk = text[start:end]
        last = 0
        for span in CODE_SPAN.finditer(chunk):
            out.append((line_of(start + span.start()), span.group(1)))
            out.append((line_of(start + last), chunk[last:span.start()]))
            last = span.end()
        out.append((line_of(start + last), chunk[last:]))

    last = 0
    for block in FENCE.finditer(text):
        prose(last, block.start())
        first = line_of(block.start())
        command, command_line = "", first
        for number, line in enumerate(block.group(0).splitlines(), first):
            if not command:
                command_line = number
            command += line.rstrip("\\") + " "
            if not line.rstrip().endswith("\\"):
                out.append((command_line, command))
                command = ""
        if command:
            out.append((command_line, command))
        last = block.end()
    prose(last, len(text))
    return out


def unknown_flags(path):
    """`file:line: --flag (with COMMAND)` for every flag its command does not define."""
    problems = []
    for start, unit in units(read(path)):
        found = list(FLAG.finditer(QUOTED_UNKNOWN.sub(lambda m: " " * len(m.group(0)), unit)))
        if not found:
            continue
        commands = {a or b for a, b in TAPEFIT_COMMAND.findall(unit)}
        bench = BENCH_SCRIPT.search(unit)
        foreign = set().union(*(flags for tool, flags in FOREIGN.items() if tool in unit.lower()))
        for match in found:
            name = match.group(1).rstrip(".-")
            number = start + unit.count("\n", 0, match.start())
            if name in foreign:
                continue
            if bench and not commands:
                if name not in bench_flags(bench.group(1)):
                    problems.append(f"{rel(path)}:{number}: --{name} (not a flag of "
                                    f"bench/{bench.group(1)}.py)")
            elif not is_flag_of(name, sorted(commands) or COMMANDS):
                where = (" or ".join(f"tapefit {c}" for c in sorted(commands))
                         if commands else "any tapefit command")
                problems.append(f"{rel(path)}:{number}: --{name} (not a flag of {where})")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=rel)
def test_every_flag_named_in_the_docs_exists(path):
    problems = unknown_flags(path)
    assert not problems, "\n".join(problems)


def test_a_misspelt_flag_fails(tmp_path):
    """The check itself: a doc naming `--lerning_rate` (prose, code span, command) fails,
    except where an error message quotes it as the unknown flag."""
    doc = tmp_path / "bad.md"
    doc.write_text("Lower it: --lerning_rate=1e-4.\n\n"
                   "```bash\ntapefit train --phase=head \\\n    --lerning_rate=1e-4\n```\n"
                   "and `tapefit predict --workdir=runs/x --epochs=3`; "
                   "`--noaugment`, `--nolearning_rate`.\n\n"
                   "```\nerror: unknown flag --lerning_rate (did you mean --learning_rate?)\n"
                   "```\n", encoding="utf-8")
    problems = unknown_flags(str(doc))
    assert len(problems) == 4, problems
    assert "--lerning_rate (not a flag of any tapefit command)" in problems[0]
    assert "--lerning_rate (not a flag of tapefit train)" in problems[1]
    assert "--epochs (not a flag of tapefit predict)" in problems[2]
    assert "--nolearning_rate" in problems[3]  # Not a boolean: no `no` form.


def test_the_flag_lists_come_from_the_entry_points():
    assert is_flag_of("unfreeze_from", ["train"]) and is_flag_of("noshare_phases", ["sweep"])
    assert is_flag_of("workdir", ["predict"]) and not is_flag_of("epochs", ["predict"])
    assert is_flag_of("tolerance", ["compare"]) and not is_flag_of("tolerance", ["train"])
    assert is_flag_of("nobackup", ["train"]) and is_flag_of("helpfull", ["train"])


# ---- links -------------------------------------------------------------------------------

def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to `-`."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", read(path))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(path):
    problems = []
    text = read(path)
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        number = prose.count("\n", 0, match.start()) + 1
        file_part, _, anchor = target.partition("#")
        linked = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                  if file_part else path)
        if not os.path.exists(linked):
            problems.append(f"{rel(path)}:{number}: {target} (no such file)")
        elif anchor and linked.endswith(".md") and anchor not in anchors(linked):
            problems.append(f"{rel(path)}:{number}: {target} (no heading #{anchor} in "
                            f"{rel(linked)})")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=rel)
def test_every_relative_link_points_to_an_existing_file(path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_a_broken_link_fails(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `--flag` section\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md) [ok](other.md#a---flag-section) [ok](#title)\n"
                   "# Title\n[gone](missing.md) [bad anchor](other.md#nothing)\n"
                   "[web](https://example.com/x.md)\n```\n[in code](nowhere.md)\n```\n")
    problems = broken_links(str(doc))
    assert len(problems) == 2, problems
    assert "missing.md (no such file)" in problems[0]
    assert "no heading #nothing" in problems[1]


def test_every_docs_page_is_linked_from_the_readme():
    readme = read(os.path.join(ROOT, "README.md"))
    for path in doc_files()[1:]:
        name = os.path.basename(path)
        if name == "python.md":  # Named in "From Python" ("See docs/python.md.").
            assert "docs/python.md" in readme
            continue
        assert f"](docs/{name})" in readme, f"README.md does not link docs/{name}"


# ---- length ------------------------------------------------------------------------------

def test_the_readme_is_at_most_400_lines():
    lines = read(os.path.join(ROOT, "README.md")).count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference parts "
        "to docs/")
