"""`make bench`: run every benchmark module and write one results file.

Each module ``bench/bench_*.py`` defines ``run(quick: bool) -> str`` returning a Markdown
section. Every section is written with the machine, the torch version and the command that made
it. ``--only NAME`` reruns one module and replaces only its section in the results file, so the
file always holds the latest measurement of each benchmark. A module that defines
``add_options(parser)`` gets its own options on this command line and is run as
``run(quick, options)``. ALIASES gives some modules a second name (``--only gpu-train``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TITLE = "# ksr benchmark results\n\nWritten by `make bench` (bench/run.py); each section says where and how it was measured.\n"
# A section starts at this marker line and runs to the next one.
MARKER = "<!-- bench: {} -->"
MARKER_RE = re.compile(r"^<!-- bench: (\w+) -->$", re.M)
# --only names that stand for a module's own name (bench_<name>.py, section <name>).
ALIASES = {"gpu-train": "train"}


def machine_summary() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
        f"- machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, GPU: {gpu}\n"
        f"- python {platform.python_version()}, torch {torch.__version__}\n"
        f"- command: `{' '.join(sys.argv)}`\n"
    )


def read_sections(path: Path) -> dict[str, str]:
    """The sections of an existing results file by benchmark name (empty when there is none)."""
    if not path.exists():
        return {}
    text = path.read_text()
    marks = list(MARKER_RE.finditer(text))
    return {
        m.group(1): text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip("\n")
        for i, m in enumerate(marks)
    }


def write_sections(path: Path, sections: dict[str, str]) -> str:
    body = "\n\n".join(f"{MARKER.format(name)}\n{text}" for name, text in sorted(sections.items()))
    text = TITLE + "\n" + body + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, add_help=False)  # -h once the modules' options are in
    ap.add_argument("--out", default=str(HERE / "results.md"), help="results file (Markdown)")
    ap.add_argument("--only", default=None, help="run only bench_<ONLY>.py and replace its section")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    only = ap.parse_known_args()[0].only
    modules = sorted(HERE.glob("bench_*.py"))
    if only:
        only = ALIASES.get(only, only)
        modules = [m for m in modules if m.stem == f"bench_{only}"]
        if not modules:
            names = ", ".join(
                [p.stem[len("bench_") :] for p in sorted(HERE.glob("bench_*.py"))]
                + [f"{a} (= {n})" for a, n in ALIASES.items()]
            )
            sys.exit(f"bench/run.py: no benchmark named {only!r} (have: {names})")
    loaded = {path: load(path) for path in modules}
    for mod in loaded.values():
        if hasattr(mod, "add_options"):
            mod.add_options(ap)
    ap.add_argument("-h", "--help", action="help", help="show this help message and exit")
    args = ap.parse_args()
    out = Path(args.out)
    sections = read_sections(out)
    for path, mod in loaded.items():
        name = path.stem[len("bench_") :]
        print(f"== {name}", flush=True)
        text = mod.run(args.quick, args) if hasattr(mod, "add_options") else mod.run(quick=args.quick)
        head, _, rest = text.strip("\n").partition("\n")  # the module's "## title" line, then its body
        sections[name] = f"{head}\n\n{machine_summary()}{rest}"
        write_sections(out, sections)  # after each module, so a crash later keeps what was measured
    print(out.read_text())


if __name__ == "__main__":
    main()
