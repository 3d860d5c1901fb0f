"""Every package the training path imports is declared in setup.cfg's base requirements; the
extract-only commands name their extra in one line when it is missing; ``ksr --help`` and
``ksr prepare`` start without importing torch."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ksr.cli import main

ROOT = Path(__file__).resolve().parents[2]
#: What ``ksr train`` and ``ksr eval`` run: the package root, the cli, the cache, fuse, common.
TRAINING_PATH = ["__init__.py", "cli", "cache", "fuse", "common"]
#: Imports of the training path that are optional features, each with the extra that declares it.
OPTIONAL = {"tensorboardX": "tensorboard", "onnx": "export", "onnxruntime": "export"}


def declared(section: str) -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    text = cfg["options"]["install_requires"] if section == "base" else cfg["options.extras_require"][section]
    names = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower())
    return names


def third_party_imports(paths: list[str]) -> dict[str, str]:
    """{top-level module: first file importing it} of the absolute imports in the files (function
    bodies included), the standard library left out."""
    found: dict[str, str] = {}
    files = [p for name in paths for p in ([ROOT / name] if name.endswith(".py") else (ROOT / name).rglob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "ksr" and top != "__future__":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_package_of_the_training_path_is_a_base_requirement():
    base = declared("base")
    distributions = importlib.metadata.packages_distributions()
    assert "scikit-learn" in base  # the probe baseline of every ksr train
    for module, where in third_party_imports(TRAINING_PATH).items():
        dists = {d.lower() for d in distributions.get(module, [module])}
        if module in OPTIONAL:
            assert dists & declared(OPTIONAL[module]), f"{module} ({where}) is not in the {OPTIONAL[module]} extra"
        else:
            assert dists & base, f"{module}, imported by {where}, is not in setup.cfg's install_requires"


def test_base_requirements_are_ranges_not_pins():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.split("#")[0].strip() for line in cfg["options"]["install_requires"].splitlines()]
    assert not [line for line in lines if "==" in line]


@pytest.mark.parametrize(
    "args, feature",
    [
        (["extract", "MANIFEST", "--out", "OUT"], "ksr extract"),
        (["predict", "--checkpoint", "CK", "--audio", "A", "--text", "hi"], "ksr predict"),
        (["demo", "--data", "OUT/d", "--cache", "OUT/c", "--run", "OUT/r", "--processes", "1"], "ksr demo"),
    ],
)
def test_without_the_extract_extra_the_command_names_it_in_one_line(tmp_path, monkeypatch, args, feature):
    (tmp_path / "m.csv").write_text("id,audio,text,label,speaker,session,gender\n")
    (tmp_path / "ck.pt").write_bytes(b"")
    (tmp_path / "a.wav").write_bytes(b"")
    swap = {"MANIFEST": "m.csv", "OUT": str(tmp_path / "out"), "CK": "ck.pt", "A": "a.wav"}
    args = [next((a.replace(k, v) for k, v in swap.items() if k in a), a) for a in args]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # `import soundfile` now fails
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        f"Error: {feature} needs the package soundfile, which is not installed: pip install 'ksr[extract]' "
        "(or pip install soundfile)"
    ]
    assert not (tmp_path / "out").exists()


def loaded_after(*args: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``ksr ARGS`` (it must exit 0)."""
    code = (
        "import sys\nfrom ksr.cli import main\n"
        "try:\n    main(sys.argv[1:], prog_name='ksr')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('\\n' + ' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.splitlines()[-1].split())


@pytest.mark.parametrize("args", [["--help"], ["prepare", "--help"], ["--version"]])
def test_help_does_not_import_torch(args):
    loaded = loaded_after(*args)
    assert "torch" not in loaded and "h5py" not in loaded and "numpy" not in loaded


def test_prepare_check_does_not_import_torch(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,audio,text,label,speaker,session,gender\nu1,a.wav,hi,ang,s1,1,F\n")
    assert "torch" not in loaded_after("prepare", "check", str(manifest))
