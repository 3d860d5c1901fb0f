"""The package's shape, as ../shared/DESIGN.md draws it, checked from the source files.

- who may import whom: the stages' rules, and fuse's wings in layers (model <- train <- report);
- no import cycle in common/, cache/, extract/ or fuse/, counting imports inside functions;
- no module imports another module's private (underscore) names;
- short functions (at most 80 lines of code, the docstring aside) and one owner per public name;
- every repository path and ``ksr.`` module named in README.md, docs/ and the package's docstrings exists.
"""

from __future__ import annotations

import ast
import builtins
import glob
import importlib
import re
from collections import defaultdict
from pathlib import Path

import pytest

import ksr

ROOT = Path(ksr.__file__).parent
#: Folders of the repository that are not the installed package.
NOT_PACKAGE = {"tests", "bench", "docs", "tools", "build", "requirements", ".ci", "runs", "caches", "data"}
MAX_FUNCTION_LINES = 80


def package_modules() -> dict[str, Path]:
    """{"ksr.fuse.train.runs": path, ...} for every module of the installed package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in NOT_PACKAGE or parts[0].startswith(".") or any(p.endswith(".egg-info") for p in parts):
            continue
        names = ["ksr", *parts[:-1]] + ([] if path.name == "__init__.py" else [path.stem])
        found[".".join(names)] = path
    return found


MODULES = package_modules()


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of the module, at any depth;
    relative imports resolved, ``from package import module`` resolved to the module."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            found += [(m, [], node.lineno) for m in submodules]
            found.append((target, [n for n in names if f"{target}.{n}" not in MODULES], node.lineno))
    return found


def internal_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for name, path in MODULES.items():
        for target, _, _ in imports_of(name, path):
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def area(module: str) -> str:
    """The layer a module belongs to: ksr.fuse.model, ksr.cache, ksr.cli, ..."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "fuse" and parts[2] in ("model", "train", "report"):
        return ".".join(parts[:3])
    return ".".join(parts[:2])


# What each area may not import (DESIGN.md: "Who may import whom").
FORBIDDEN = {
    "ksr.common": ("ksr.cache", "ksr.extract", "ksr.fuse", "ksr.cli", "ksr.predict", "ksr.demo"),
    "ksr.cache": ("ksr.extract", "ksr.fuse", "ksr.cli", "ksr.predict", "ksr.demo"),
    "ksr.extract": ("ksr.fuse", "ksr.cli", "ksr.predict", "ksr.demo"),
    "ksr.fuse": ("ksr.extract", "ksr.cli", "ksr.predict", "ksr.demo"),
    "ksr.fuse.model": ("ksr.fuse.train", "ksr.fuse.report", "ksr.extract", "ksr.cli"),
    "ksr.fuse.train": ("ksr.fuse.report", "ksr.extract", "ksr.cli"),
    "ksr.fuse.report": ("ksr.extract", "ksr.cli"),
}
ENCODER_LIBRARIES = ("transformers", "fairseq", "soundfile", "soxr", "funasr", "av")


def test_the_fuse_wings_hold_their_modules():
    wings = {area(m) for m in MODULES if m.startswith("ksr.fuse.")}
    assert wings == {"ksr.fuse.model", "ksr.fuse.train", "ksr.fuse.report"}
    loose = [m for m in MODULES if m.startswith("ksr.fuse.") and m.count(".") == 2 and m not in wings]
    assert loose == [], "every fuse module lives in a wing"


def test_nothing_imports_against_the_layers():
    bad = []
    for name, path in MODULES.items():
        for target, _, line in imports_of(name, path):
            rules = FORBIDDEN.get(area(name), ()) + (FORBIDDEN["ksr.fuse"] if name.startswith("ksr.fuse") else ())
            if any(target == r or target.startswith(r + ".") for r in rules):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            if name.startswith("ksr.fuse") and target.split(".")[0] in ENCODER_LIBRARIES:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the encoder library {target}")
    assert bad == []


def find_cycle(graph: dict[str, set[str]], nodes: list[str]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in nodes:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in nodes:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("package", ["ksr.common", "ksr.cache", "ksr.extract", "ksr.fuse"])
def test_no_import_cycle(package):
    graph = internal_graph()
    nodes = [m for m in MODULES if m.startswith(package + ".")]
    # A package's __init__ re-exports its modules: an edge into __init__ from inside is the cycle
    # that matters, one out of it is only the re-export.
    graph = {m: {t for t in ts if not (t == package or (m == package))} for m, ts in graph.items()}
    assert find_cycle(graph, nodes) is None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}, ["a", "b", "c"]) is None


def test_no_module_imports_private_names_of_another():
    bad = []
    for name, path in MODULES.items():
        for target, names, line in imports_of(name, path):
            if not target.startswith("ksr"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {target}")
    assert bad == []


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines from its ``def`` to its end, its docstring left out."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in MODULES.values():
        for node in functions(ast.parse(path.read_text())):
            if code_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({code_lines(node)} lines)")
    assert long == []


def test_code_lines_leave_the_docstring_out():
    tree = ast.parse('def f():\n    """Two\n    lines."""\n    x = 1\n    return x\n')
    assert code_lines(tree.body[0]) == 3


def test_public_names_have_one_owner():
    """No two public top-level functions share a name, and no function is named like a module."""
    owners = defaultdict(list)
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                owners[node.name].append(name)
    shared = {n: ms for n, ms in owners.items() if len(ms) > 1}
    assert shared == {}
    module_names = {m.rpartition(".")[2] for m in MODULES}
    assert sorted(set(owners) & module_names) == []


def test_every_package_docstring_lists_its_modules():
    """A reader opening a package's ``__init__`` learns every module and sub-package in it."""
    unlisted = []
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name == "ksr":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        children = {m.rpartition(".")[2] for m in MODULES if m.rpartition(".")[0] == name}
        unlisted += [f"{name}: {c}" for c in sorted(children) if f"``{c}``" not in doc and f".{c}`" not in doc]
    assert unlisted == []


# --- names in the documentation ------------------------------------------------------------------

#: Repository folders a documented path may start with (``caches/`` and ``runs/`` are a user's).
REPO_DIRS = ("cache", "cli", "common", "extract", "fuse", "tests", "docs", "bench", "tools", "requirements", ".ci")
PATH = re.compile(r"(?<![\w./~$-])((?:" + "|".join(re.escape(d) for d in REPO_DIRS) + r")/[\w.*/-]*[\w*/])")
DOTTED = re.compile(r"(?<![\w.])ksr\.(?:cache|cli|common|extract|fuse|predict|demo)(?:\.[A-Za-z_]\w*)*")


#: A file named without its folder (``pipeline.py``): some file of the repository must have that name.
BARE_FILE = re.compile(r"`{1,2}(\w+\.py)`{1,2}")


def documents() -> dict[str, str]:
    """README.md, docs/*.md, and every docstring of the package (modules, classes, functions)."""
    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))})
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)} (docstring)"
                    texts[where] = doc
    return texts


#: A function named with its call parentheses (``load_model()``, ``ksr.fuse.load_model()``).
CALL = re.compile(r"`{1,2}((?:[\w.]+\.)?(\w+))\(\)`{1,2}")


def defined_names() -> set[str]:
    """Every function, method and class the package defines, and Python's builtins."""
    names = set(dir(builtins))
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
    return names


def repository_file_names() -> set[str]:
    return {p.name for p in ROOT.rglob("*.py") if not any(part.startswith(".venv") for part in p.parts)}


def path_exists(text: str) -> bool:
    text = text.rstrip(".")
    if "*" in text:
        return bool(glob.glob(str(ROOT / text)))
    return (ROOT / text).exists()


def dotted_exists(text: str) -> bool:
    parts = text.rstrip(".").split(".")
    for cut in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_documented_path_and_module_exists():
    missing = []
    names, functions = repository_file_names(), defined_names()
    for where, text in documents().items():
        missing += [f"{where}: {found}" for found in BARE_FILE.findall(text) if found not in names]
        for full, name in CALL.findall(text):  # other libraries' functions (torch.load()) are theirs
            if (full == name or full.startswith("ksr.")) and name not in functions:
                missing.append(f"{where}: {full}()")
        for found in PATH.findall(text):
            if not path_exists(found):
                missing.append(f"{where}: {found}")
        for found in DOTTED.findall(text):
            if not dotted_exists(found):
                missing.append(f"{where}: {found}")
    assert missing == []


def test_the_documentation_check_sees_a_missing_path():
    assert CALL.findall("call `best_device()` or ``ksr.fuse.load_model()``") == [
        ("best_device", "best_device"),
        ("ksr.fuse.load_model", "load_model"),
    ]
    assert "load_model" in defined_names() and "best_device" not in defined_names()
    assert BARE_FILE.findall("in ``cli.py`` and `pipeline.py`") == ["cli.py", "pipeline.py"]
    assert "pipeline.py" in repository_file_names() and "cli.py" not in repository_file_names()
    assert PATH.findall("see fuse/train/runs.py and caches/demo, not ./cache/x.py") == ["fuse/train/runs.py"]
    assert path_exists("fuse/train/runs.py") and not path_exists("fuse/training.py")
    assert dotted_exists("ksr.fuse.train.runs.fold_files") and not dotted_exists("ksr.fuse.training")
