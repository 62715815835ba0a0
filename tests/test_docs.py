"""Docs that cannot go stale: what README.md and docs/*.md name exists, and ``--help`` is plain, complete text.

Checked, with the parsers built in this process (``build_parser`` and each module's ``add_parser``; no
subprocess, no training):

- every ``python -m nsynth_cnn[.tools] SUB ...`` command names a sub-command that exists and options its parser
  knows; ``python -m nsynth_cnn.tools.bench ...`` a module that runs as a script;
- every inline ``SUB --option`` (``train --watch``) and ``--option`` names an option of that command (of any
  command) or one that docs/experiments.md's table of removed experiments records;
- every ``make TARGET`` names a target of the Makefile;
- every ``nsynth_cnn.module[.attribute]``, ``module.attribute`` (``train.run_recipe``), ``nsynth_cnn/path`` and
  ``tests/test_x.py[::test_name]`` exists;
- README's Layout block names every module of ``nsynth_cnn/`` and ``nsynth_cnn/tools/``, and nothing else;
- ``--help`` of every command exits 0, has a description, a help text for every option and no reST markup.

A name or command that no longer exists may stay only as history: inside the removed-experiments section of
docs/experiments.md, or in a paragraph (or table row) that names the commit where it can still be found.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from nsynth_cnn.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY_POINTS = ("nsynth_cnn", "nsynth_cnn.tools")          # python -m ENTRY SUB-COMMAND ...
REMOVED_HEADING = "## Experiments removed from the code"    # in docs/experiments.md
RST = re.compile(r"``|:(?:func|class|mod|meth|attr|data|obj):`")
OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")

# The commands' modules are imported at collection, as the other test files import theirs: what an import does on
# the side (nsynth_cnn.tools.serve looks up libc, which runs ldconfig) is not what these fast tests check, and the
# fast tier's guard refuses any subprocess while a test runs.
for _entry in ENTRY_POINTS:
    for _module in importlib.import_module(f"{_entry}.__main__").COMMAND_MODULES:
        importlib.import_module(_module)


# ------------------------------------------------------------------------------------------ the parsers
@functools.lru_cache(maxsize=None)
def parsers() -> dict[str, argparse.ArgumentParser]:
    """``{"nsynth_cnn": top parser, "nsynth_cnn train": its sub-parser, ..., "nsynth_cnn.tools bench": ...}``."""
    out = {}
    for entry in ENTRY_POINTS:
        main = importlib.import_module(f"{entry}.__main__")
        top = build_parser(f"python -m {entry}", main.DESCRIPTION, main.COMMAND_MODULES)
        out[entry] = top
        for name, sub in _subcommands(top).items():
            out[f"{entry} {name}"] = sub
    return out


def _subcommands(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(ap: argparse.ArgumentParser) -> set[str]:
    return set(ap._option_string_actions)


@functools.lru_cache(maxsize=None)
def _module_commands() -> dict[str, str]:
    """``{"nsynth_cnn.tools.bench": "nsynth_cnn.tools bench", ...}``: which parser a module adds."""
    out = {}
    for entry in ENTRY_POINTS:
        for module in importlib.import_module(f"{entry}.__main__").COMMAND_MODULES:
            sub = argparse.ArgumentParser().add_subparsers()
            importlib.import_module(module).add_parser(sub)
            (name,) = sub.choices
            out[module] = f"{entry} {name}"
    return out


def _subcommand_names() -> dict[str, str]:
    """``{"train": "nsynth_cnn train", "corpus": "nsynth_cnn.tools corpus", ...}`` (names are unique)."""
    names = {key.split(" ", 1)[1]: key for key in parsers() if " " in key}
    assert len(names) == len([k for k in parsers() if " " in k]), "a sub-command name is used twice"
    return names


# ------------------------------------------------------------------------------------------ the docs
@dataclass(frozen=True)
class Code:
    """One piece of code in a doc: an inline span, or one logical line of a fenced block (or its comment)."""
    doc: str
    line: int
    text: str
    block: str          # the paragraph, table row or fenced block it stands in
    comment: bool = False
    fenced: bool = False

    def where(self) -> str:
        return f"{self.doc}:{self.line}: {self.text.strip()[:100]!r}"


def _blocks(text: str):
    """``(first line number, block text, fenced)``: fenced code blocks, table rows, and paragraphs."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            yield i + 2, "\n".join(lines[i + 1:j]), True
            i = j + 1
        elif lines[i].lstrip().startswith("|"):
            yield i + 1, lines[i], False
            i += 1
        elif lines[i].strip():
            j = i
            while (j < len(lines) and lines[j].strip() and not lines[j].startswith("```")
                   and not lines[j].lstrip().startswith("|")):
                j += 1
            yield i + 1, "\n".join(lines[i:j]), False
            i = j
        else:
            i += 1


@functools.lru_cache(maxsize=None)
def doc_code() -> tuple[Code, ...]:
    out = []
    for path in DOCS:
        doc = str(path.relative_to(ROOT))
        for line, block, fenced in _blocks(path.read_text(encoding="utf-8")):
            if fenced:
                logical = re.sub(r"\\\n\s*", " ", block)
                for k, text in enumerate(logical.split("\n")):
                    hash_ = re.search(r"(?:^|\s)#", text)
                    code, comment = (text[:hash_.start()], text[hash_.end():]) if hash_ else (text, "")
                    out.append(Code(doc, line + k, code, block, fenced=True))
                    if comment:
                        out.append(Code(doc, line + k, comment, block, comment=True, fenced=True))
            else:
                for m in re.finditer(r"`([^`]+)`", block):
                    out.append(Code(doc, line + block.count("\n", 0, m.start()), m.group(1).replace("\n", " "),
                                    block))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def removed() -> tuple[dict[str, set[str]], frozenset[str], str]:
    """docs/experiments.md's table of removed experiments: ``({command: removed options}, the commits where
    they can be found, the section's text)``."""
    text = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    assert REMOVED_HEADING in text, f"docs/experiments.md has no section {REMOVED_HEADING!r}"
    section = text.split(REMOVED_HEADING, 1)[1].split("\n## ", 1)[0]
    options: dict[str, set[str]] = {}
    for span in re.findall(r"`([^`]+)`", section):
        words = span.split()
        if words and words[0] in _subcommand_names():
            options.setdefault(words[0], set()).update(OPTION.findall(span))
    commits = frozenset(re.findall(r"`([0-9a-f]{7,40})`", section))
    assert commits, f"{REMOVED_HEADING!r} names no commit where the removed code can be found"
    return options, commits, section


def _historical(code: Code) -> bool:
    """In the removed-experiments section, or in a block that names the commit where the code still is."""
    _, commits, section = removed()
    return code.block in section or any(c in code.block for c in commits)


# ------------------------------------------------------------------------------------------ the checks
def _check_options(code: Code, parser_key: str, options) -> list[str]:
    known = _options(parsers()[parser_key])
    gone = removed()[0].get(parser_key.split(" ")[-1], set())
    errors = []
    for opt in options:
        if opt in known:
            continue
        if opt in gone:
            errors.append(f"{code.where()}: `{parser_key} {opt}` was removed: mark the command as history (name "
                          f"the commit where it runs, {sorted(removed()[1])}) or fix it")
        else:
            errors.append(f"{code.where()}: `{parser_key}` has no option {opt}")
    return errors


def _python_m_errors(code: Code) -> list[str]:
    errors = []
    for m in re.finditer(r"\bpython3?\s+-m\s+(nsynth_cnn[\w.]*)(.*)", code.text):
        module = m.group(1).rstrip(".")
        args = re.split(r";|&&|\s\|\s|\d?>|\s&(?:\s|$)|\s#", m.group(2))[0]
        words = args.split()
        if module in ENTRY_POINTS:
            if not words or words[0].startswith("-"):
                errors += _check_options(code, module, OPTION.findall(args))
                continue
            if not re.fullmatch(r"\{?[a-z][\w,-]*\}?", words[0]):
                continue                                                # a placeholder such as "..."
            names = words[0].strip("{}").split(",")
            for name in names:
                if f"{module} {name}" not in parsers():
                    errors.append(f"{code.where()}: `python -m {module}` has no sub-command {name!r}")
            if len(names) == 1 and f"{module} {names[0]}" in parsers():
                errors += _check_options(code, f"{module} {names[0]}", OPTION.findall(args))
        else:
            path = ROOT.joinpath(*module.split("."))
            script = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__main__.py"
            if not script.exists() or (script.name != "__main__.py"
                                       and '__name__ == "__main__"' not in script.read_text(encoding="utf-8")):
                errors.append(f"{code.where()}: `python -m {module}` does not run: no such script")
            elif module in _module_commands():
                errors += _check_options(code, _module_commands()[module], OPTION.findall(args))
    return errors


def _bare_errors(code: Code) -> list[str]:
    """Inline ``SUB --option ...`` and ``--option`` spans (not fenced blocks, which also hold printed output)."""
    words = code.text.split()
    if code.fenced or not words or "python" in code.text:
        return []
    names = _subcommand_names()
    options = OPTION.findall(code.text)
    gone = removed()[0]
    if words[0] in names and options:
        known = _options(parsers()[names[words[0]]]) | gone.get(words[0], set())
        return [f"{code.where()}: `{words[0]}` has no option {o} (nor is it in the table of removed experiments)"
                for o in options if o not in known]
    if words[0].startswith("--") and code.block not in removed()[2]:
        known = set().union(*(_options(p) for p in parsers().values()), *gone.values())
        if words[0] not in known and OPTION.fullmatch(words[0]):
            return [f"{code.where()}: no command has the option {words[0]} (nor is it in the table of removed "
                    "experiments)"]
    return []


@functools.lru_cache(maxsize=None)
def make_targets() -> frozenset[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.%$()/ -]+?)\s*::?(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(t for t in m.group(1).split() if not t.startswith(".") and "$" not in t)
    return frozenset(targets)


def _make_errors(code: Code) -> list[str]:
    errors = []
    for m in re.finditer(r"(?<![\w./-])make((?:\s+\S+)+)", code.text):
        for word in m.group(1).split():
            word = word.rstrip(".,;:")                              # "make bench." in a sentence
            if re.match(r"[A-Z_]+=", word) or word.startswith("-"):
                continue                                            # VAR=value, make's own flags
            if not re.fullmatch(r"[a-z][\w-]*", word):
                break
            if word not in make_targets():
                errors.append(f"{code.where()}: the Makefile has no target {word!r}")
            if code.comment:
                break                                               # prose follows in a comment
    return errors


def _dotted_exists(dotted: str) -> bool:
    """``nsynth_cnn.a.b[.attr]``: a module or package that exists, then (optionally) one of its attributes."""
    parts = dotted.split(".")
    path, i = ROOT / parts[0], 1
    while i < len(parts):
        if (path / parts[i] / "__init__.py").exists():
            path, i = path / parts[i], i + 1
        elif (path / f"{parts[i]}.py").exists():
            i += 1
            break
        else:
            break
    if i == len(parts):
        return True
    return hasattr(importlib.import_module(".".join(parts[:i])), parts[i])


def _path_exists(name: str) -> bool:
    name = name.rstrip(".,:;")
    file, _, test = name.partition("::")
    path = ROOT / file
    if not path.exists():
        return False
    return not test or re.search(rf"^\s*(?:async\s+)?def {re.escape(test)}\b", path.read_text(encoding="utf-8"),
                                 re.M) is not None


@functools.lru_cache(maxsize=None)
def _short_modules() -> dict[str, str]:
    """``{"train": "nsynth_cnn.train", "corpus": "nsynth_cnn.tools.corpus", ...}``: the names docs use for the
    package's modules in ``train.run_recipe``, ``corpus.fetch_tonejs``."""
    package = ROOT / "nsynth_cnn"
    out = {}
    for path in sorted(package.rglob("*.py"), key=lambda p: len(p.parts)):    # a top-level name wins
        module = path.parent if path.name == "__init__.py" else path.with_suffix("")
        if module != package and not module.name.startswith("_"):
            out.setdefault(module.name, ".".join(module.relative_to(ROOT).parts))
    return out


FILE_SUFFIXES = {"py", "md", "json", "keras", "log", "csv", "html", "pdf", "png", "txt", "tfrecord", "zip", "gz",
                 "ipynb", "h5", "wav", "mp3", "flac", "ogg", "sf2", "pat", "cfg"}


def _name_errors(code: Code) -> list[str]:
    errors = []
    short = _short_modules()
    for m in re.finditer(rf"(?<![\w./-])({'|'.join(short)})\.([A-Za-z_]\w*)", code.text):
        if m.group(2) not in FILE_SUFFIXES and not _dotted_exists(f"{short[m.group(1)]}.{m.group(2)}"):
            errors.append(f"{code.where()}: {m.group(0)} ({short[m.group(1)]}.{m.group(2)}) does not exist")
    for m in re.finditer(r"(?<![\w./-])nsynth_cnn(?:\.[A-Za-z_]\w*)+", code.text):
        if not _dotted_exists(m.group(0)):
            errors.append(f"{code.where()}: {m.group(0)} does not exist")
    for m in re.finditer(r"(?<![\w./-])(?:nsynth_cnn|tests)(?:/[\w.-]+)+/?(?:::\w+)?", code.text):
        if not _path_exists(m.group(0)):
            errors.append(f"{code.where()}: {m.group(0)} does not exist")
    return errors


# ------------------------------------------------------------------------------------------ the tests
def test_docs_name_only_commands_options_targets_and_files_that_exist():
    errors = []
    for code in doc_code():
        found = (_python_m_errors(code) + _bare_errors(code) + _make_errors(code) + _name_errors(code))
        if found and not _historical(code):
            errors += found
    assert not errors, "stale names in README.md / docs/*.md:\n" + "\n".join(errors)


def test_the_checks_see_the_docs_commands():
    """Guards the extraction itself: if it found nothing, the test above would pass on anything."""
    codes = doc_code()
    assert sum(bool(re.search(r"python -m nsynth_cnn \w", c.text)) for c in codes) >= 10
    assert sum(bool(re.search(r"python -m nsynth_cnn\.tools \w", c.text)) for c in codes) >= 5
    assert sum(bool(re.search(r"(?<![\w-])make \w", c.text)) for c in codes) >= 10
    assert {"train", "evaluate", "test", "setup", "notebook"} <= make_targets()
    assert "--early-release" in removed()[0]["train"] and removed()[1]
    # a stale command, option, target or module in a doc is caught; history marked with the commit is not
    stale = [Code("x.md", 1, "python -m nsynth_cnn corpus --out c", "p"),
             Code("x.md", 1, "python -m nsynth_cnn train --train t --no-such-flag", "p"),
             Code("x.md", 1, "python -m nsynth_cnn train --train t --early-release 0.3", "p"),
             Code("x.md", 1, "train --no-such-flag 3", "p"),
             Code("x.md", 1, "make no-such-target", "p"),
             Code("x.md", 1, "nsynth_cnn.no_such_module", "p"),
             Code("x.md", 1, "nsynth_cnn.params.NO_SUCH_NAME", "p"),
             Code("x.md", 1, "train.no_such_function", "p"),
             Code("x.md", 1, "tests/test_docs.py::test_no_such_test", "p")]
    for code in stale:
        assert _python_m_errors(code) + _bare_errors(code) + _make_errors(code) + _name_errors(code), code
    commit = sorted(removed()[1])[0]
    assert _historical(Code("x.md", 1, "python -m nsynth_cnn corpus --recording-rooms 4", f"at `{commit}`: x"))
    fine = [Code("x.md", 1, "python -m nsynth_cnn.tools corpus --out c --seed 0", "p"),
            Code("x.md", 1, "train --mixup 0.3", "p"),
            Code("x.md", 1, "make train TRAIN_DATA=a VALID_DATA=b", "p"),
            Code("x.md", 1, "nsynth_cnn.params.RECIPE nsynth_cnn/tools/serve/ tests/test_docs.py", "p"),
            Code("x.md", 1, "corpus.fetch_tonejs (docs/corpus.md, train.log)", "p")]
    for code in fine:
        assert not (_python_m_errors(code) + _bare_errors(code) + _make_errors(code) + _name_errors(code)), code


@pytest.mark.slow                                                   # runs git
@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_the_commit_of_the_removed_experiments_exists():
    for commit in removed()[1]:
        ok = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
        assert ok.returncode == 0, f"docs/experiments.md names commit {commit}, which this repository lacks"


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    named = set(re.findall(r"(?<![\w.])(\w+\.py|\w+/)", block))
    package = ROOT / "nsynth_cnn"
    modules = {p.name for p in package.rglob("*.py") if p.name != "__init__.py" or p.parent == package}
    packages = {p.parent.name + "/" for p in package.rglob("*/__init__.py")}
    wanted = modules | packages
    assert not wanted - named, f"README's Layout block does not name {sorted(wanted - named)}"
    listed = {n for n in named if n.endswith(".py")}
    assert not listed - modules, f"README's Layout block names modules that do not exist: {sorted(listed - modules)}"


def test_help_of_every_command_is_plain_complete_text():
    errors = []
    for key, ap in parsers().items():
        if not ap.description:
            errors.append(f"{key}: no description")
        for action in ap._actions:
            if action.help is None and not isinstance(action, argparse._SubParsersAction):
                errors.append(f"{key}: {'/'.join(action.option_strings) or action.dest} has no help text")
        text = ap.format_help()
        if RST.search(text):
            errors.append(f"{key}: reST markup in --help: {RST.search(text).group(0)!r}")
        entry, _, sub = key.partition(" ")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            parsers()[entry].parse_args([sub, "--help"] if sub else ["--help"])
        if exit_.value.code != 0 or "usage:" not in out.getvalue():
            errors.append(f"{key} --help: exit code {exit_.value.code}")
    assert not errors, "\n".join(errors)
