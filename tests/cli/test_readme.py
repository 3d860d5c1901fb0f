"""The commands the README and docs tell users to type exist: make targets and variables in the
Makefile, ksr commands, subcommands and options in the click CLI."""

import re
import shlex
from pathlib import Path

import click
import pytest

from ksr.cli import main as ksr_cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_lines(markdown: str) -> list[str]:
    """Lines inside fenced blocks and inline `code` spans: where commands are written."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif fenced:
            lines.append(line.split("#", 1)[0])  # shell comment
        else:
            lines += re.findall(r"`([^`]+)`", line)
    return lines


def commands(line: str, program: str) -> list[list[str]]:
    """The argument lists that follow each word ``program`` (or a path ending in it) in a line."""
    try:
        words = shlex.split(line.replace("|", " | "))
    except ValueError:
        words = line.split()
    found = []
    for i, word in enumerate(words):
        if word == program or word.endswith("/" + program):
            rest = []
            for w in words[i + 1 :]:
                if w in ("|", ";", "&&", "/") or w == program:
                    break
                rest.append(w.strip("[]"))
            found.append(rest)
    return found


def makefile_facts() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", text, re.M))
    variables = set(re.findall(r"^\s*([A-Z_]+)\s*\??=", text, re.M))
    return targets, variables


def check_make(args: list[str], targets: set[str], variables: set[str]) -> list[str]:
    problems = []
    for a in args:
        if "=" in a:
            name = a.split("=", 1)[0]
            if name not in variables:
                problems.append(f"make variable {name} is not in the Makefile")
        elif re.fullmatch(r"[a-z][\w-]*", a) and a not in targets:
            problems.append(f"make target {a!r} is not in the Makefile")
    return problems


def check_ksr(args: list[str]) -> list[str]:
    """Walk the click tree along the words; options must belong to the command reached."""
    command: click.Command = ksr_cli
    path = ["ksr"]
    for a in args:
        if a.startswith("--"):
            option = a.split("=", 1)[0]
            names = {o for p in command.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
            if option not in names | {"--help"}:
                return [f"{' '.join(path)}: no option {option}"]
        elif isinstance(command, click.Group) and re.fullmatch(r"[a-z][a-z-]*", a):
            sub = command.commands.get(a)
            if sub is None:
                return [f"{' '.join(path)}: no command {a!r}"]
            command, path = sub, path + [a]
        elif isinstance(command, click.Group):
            break  # a placeholder such as COMMAND
    return []


def doc_problems(markdown: str) -> list[str]:
    targets, variables = makefile_facts()
    problems = []
    for line in code_lines(markdown):
        for args in commands(line, "make"):
            problems += check_make(args, targets, variables)
        for args in commands(line, "ksr"):
            problems += check_ksr(args)
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_exist(doc):
    assert doc_problems(doc.read_text()) == []


def test_readme_shows_the_two_commands_and_the_iemocap_walkthrough():
    lines = code_lines((ROOT / "README.md").read_text())
    said = {" ".join(a) for line in lines for a in commands(line, "make")}
    assert {"test", "demo", "train"} <= said
    assert any(a.startswith("extract DATA=iemocap") for a in said)
    assert any(a[:2] == ["eval", "--fold"] for line in lines for a in commands(line, "ksr"))


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_checker_catches_wrong_commands():
    bad = "```\nmake tset\nmake train DATTA=x\nksr trian\nksr eval --fodl 5\nksr cache inof\n```\n"
    assert doc_problems(bad) == [
        "make target 'tset' is not in the Makefile",
        "make variable DATTA is not in the Makefile",
        "ksr: no command 'trian'",
        "ksr eval: no option --fodl",
        "ksr cache: no command 'inof'",
    ]
    good = "`ksr cache verify DIR`, `make extract DATA=demo`, `.venv/bin/ksr eval --fold 5`, `ksr COMMAND --help`"
    assert doc_problems(good) == []
