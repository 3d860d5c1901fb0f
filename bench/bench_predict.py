"""Batch prediction (``ksr predict --manifest``) against ``ksr predict`` called once per file.

The demo corpus (``make_demo_corpus``, seed 0) extracted with the demo's tiny encoders
(``tiny-audio``, ``tiny-text``, 230 frames), and a checkpoint of the default model
(``ModelConfig()``: layers 5,3,2, 8 heads, FFN 256/512) at that cache's dims, random weights
(the rate does not depend on them), recording the cache's metadata as ``ksr train`` does. Both
ways run the ``ksr`` command in a fresh process, as a user types it, on the same files:

- per file: ``ksr predict --checkpoint C --audio F --text T`` for each of the first
  ``PER_FILE`` files, one after the other; rate = files / total wall time;
- batch: ``ksr predict --checkpoint C --manifest M --out P`` over all the files (features in
  ``P.work``, removed after), and the same with ``--run`` over a 5-fold run of that model (the
  ensemble's cost).

Wall time of the whole command (process start, imports, model and encoder loading included:
that is what a user waits for). The 1-minute load average before and after is recorded: the
development machine is shared with other jobs, so rates are lower bounds.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PER_FILE = 6
FILES = 160  # per_speaker 16: 10 speakers


def ksr(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one ``ksr`` command (which must succeed)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-P", "-m", "ksr.cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"ksr {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return seconds


def setup(root: Path, files: int) -> tuple[Path, Path, Path, list]:
    """(checkpoint, 5-fold run, prediction manifest, its utterances)."""
    import torch

    from ksr.demo import AUDIO_FRAMES
    from ksr.extract.corpora.demo import make_demo_corpus
    from ksr.extract.corpora.manifest import read_manifest
    from ksr.extract.pipeline import extract_corpus
    from ksr.fuse import KSTransformer, ModelConfig, save_checkpoint
    from ksr.fuse.model.config import cache_dims

    manifest = make_demo_corpus(root / "data", seed=0, per_speaker=max(4, files // 10))
    rows = read_manifest(manifest).rows[:files]
    one = root / "one.csv"
    with open(one, "w", newline="") as f:  # a prediction manifest: id, audio, text
        writer = csv.writer(f)
        writer.writerow(["id", "audio", "text"])
        writer.writerows([u.id, u.audio, u.text] for u in rows)
    summary = extract_corpus(  # only for the cache metadata the checkpoint records
        manifest, root / "cache", "tiny-audio", "tiny-text", max_audio_len=AUDIO_FRAMES, device="cpu", progress=False
    )
    from ksr.cache import open_cache

    meta = open_cache(summary.cache_dir, progress=False).meta
    torch.manual_seed(0)
    model = KSTransformer(ModelConfig().replace(**cache_dims(meta)))
    checkpoint = save_checkpoint(root / "model.pt", model, {"cache_meta": meta.to_dict()})
    run = root / "run"
    for fold in range(1, 6):
        (run / "seed1" / f"fold{fold}").mkdir(parents=True)
        shutil.copy(checkpoint, run / "seed1" / f"fold{fold}" / "best.pt")
    return checkpoint, run, one, rows


def run(quick: bool = False) -> str:
    per_file, files = (2, 40) if quick else (PER_FILE, FILES)
    with tempfile.TemporaryDirectory(prefix="ksr-bench-predict-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "KSR_CACHE_DIR": str(root / "k")}
        os.environ["KSR_CACHE_DIR"] = env["KSR_CACHE_DIR"]  # the tiny encoders are built there once
        checkpoint, ensemble, manifest, rows = setup(root, files)
        load_before = os.getloadavg()[0]
        single = sum(
            ksr(["predict", "--checkpoint", str(checkpoint), "--audio", str(u.audio), "--text", u.text], env)
            for u in rows[:per_file]
        )
        out = ["--manifest", str(manifest), "--out"]
        batch = ksr(["predict", "--checkpoint", str(checkpoint), *out, str(root / "a.csv")], env)
        voted = ksr(["predict", "--run", str(ensemble), *out, str(root / "b.csv")], env)
        load_after = os.getloadavg()[0]
    per_file_rate = per_file / single
    rows_md = [
        f"| `ksr predict --audio F --text T`, once per file | {per_file} | {single:.1f} | {per_file_rate:.2f} | 1.0x |",
        f"| `ksr predict --manifest M --out P` | {files} | {batch:.1f} | {files / batch:.2f} | "
        f"{files / batch / per_file_rate:.1f}x |",
        f"| `ksr predict --run RUN --manifest M --out P` (5 models vote) | {files} | {voted:.1f} | "
        f"{files / voted:.2f} | {files / voted / per_file_rate:.1f}x |",
    ]
    return "\n".join(
        [
            "## Batch prediction: `ksr predict --manifest` vs once per file (issue 23)",
            "",
            "Demo corpus, the demo's tiny encoders (230 frames), the default model (layers 5,3,2, 8 heads, "
            "FFN 256/512) at the cache's dims, random weights; wall time of each whole `ksr` command in a "
            "fresh process (imports, model and encoder loading included), CPU, threads as the machine line says. "
            f"1-minute load average {load_before:.1f} before, {load_after:.1f} after (a shared machine: "
            "other developers' jobs ran at the same time).",
            "",
            "| command | files | wall s | utterances/s | vs once per file |",
            "|---|---|---|---|---|",
            *rows_md,
            "",
        ]
    )
