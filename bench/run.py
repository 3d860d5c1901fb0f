"""`make bench`: run every benchmark module and write one results file.

Each module ``bench/bench_*.py`` defines ``run(quick: bool) -> str`` returning a Markdown
section. Results are written with the machine, the torch version and the command that made them.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(HERE / "results.md"), help="results file (Markdown)")
    ap.add_argument("--only", default=None, help="run only bench_<ONLY>.py")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = ap.parse_args()
    modules = sorted(HERE.glob("bench_*.py"))
    if args.only:
        modules = [m for m in modules if m.stem == f"bench_{args.only}"]
    sections = []
    for path in modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print(f"== {path.stem}", flush=True)
        sections.append(mod.run(quick=args.quick))
    text = "# ksr benchmark results\n\n" + machine_summary() + "\n" + "\n\n".join(sections) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
