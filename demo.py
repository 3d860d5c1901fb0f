"""``make demo``: the whole pipeline on the built-in corpus, no downloads.

Generates the demo corpus (``ksr.extract.demo``; docs/demo.md), extracts it with the tiny
built-in encoders, trains a small KS-Transformer with the ``ksr`` recipe on every
leave-one-session-out fold, and audio-only and text-only models beside it; every one of the
three also gets its linear-probe baseline on the same folds. Every step resumes: a rerun reuses
the corpus, the cache and finished folds. It joins the stages, so it lives beside ``cli.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import open_cache
from .common import resolve_device
from .extract.demo import make_demo_corpus
from .extract.pipeline import extract_corpus
from .fuse.config import ModelConfig
from .fuse.experiment import train_and_report
from .fuse.recipes import PRESET_MODEL_SETTINGS, recipe
from .fuse.runs import RunSpec, model_config_for_cache, point_latest

# The demo trains with the `ksr` recipe and keeps each fold's last epoch (docs/learning.md: its
# 24-utterance validation sets pick worse epochs than the last), and departs from the paper's
# setting only to finish in minutes on 2 CPU cores: a small model (one layer per stage, 4 heads,
# FFN 64, no attention-weight dropout, classifier dropout 0.2), and audio cut at AUDIO_FRAMES
# frames instead of 460. Dims come from the tiny encoders' cache.
SELECT = "last"
RECIPE = "ksr"
AUDIO_FRAMES = 230
ENCODERS = ("tiny-audio", "tiny-text")
MODEL = ModelConfig(
    num_layers=(1, 1, 1),
    num_heads=4,
    audio_ffn_dim=64,
    text_ffn_dim=64,
    max_positions=512,
    attention_dropout=0.0,
    **PRESET_MODEL_SETTINGS[RECIPE],  # standardised inputs, classifier dropout 0.2
)
EPOCHS = recipe(RECIPE).epochs
# (label, modalities, run folder under the demo's run directory)
RUNS = (("fused", "both", ""), ("audio only", "audio", "audio-only"), ("text only", "text", "text-only"))


@dataclass
class DemoResult:
    utterances: int
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> the model's summary
    probes: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> its linear probe's summary
    fused_report: dict[str, Any] | None = None
    seconds: float = 0.0


def run_demo(
    data: str | Path,
    cache_dir: str | Path,
    run_dir: str | Path,
    epochs: int = EPOCHS,
    compare: bool = True,
    say: Callable[[str], Any] = print,
) -> DemoResult:
    began = time.perf_counter()
    manifest = Path(data) / "manifest.csv"
    if not manifest.is_file():
        say(f"[1/3] generating the demo corpus in {data}")
        make_demo_corpus(data, seed=0)
    else:
        say(f"[1/3] reusing the demo corpus in {data}")
    say(f"[2/3] extracting features with {' + '.join(ENCODERS)} into {cache_dir}")
    summary = extract_corpus(manifest, cache_dir, *ENCODERS, corpus="demo", max_audio_len=AUDIO_FRAMES)
    say(summary.format())
    cache = open_cache(cache_dir, progress=False)
    device = resolve_device("auto")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # A model this small trains faster on one thread than on two, idle or busy: its ops are
        # too small to split (bench/results.md, "threads").
        torch.set_num_threads(1)
    try:
        return _train_all(cache, cache_dir, run_dir, device, epochs, compare, say, began)
    finally:
        torch.set_num_threads(threads)


def _train_all(cache, cache_dir, run_dir, device, epochs, compare, say, began) -> DemoResult:
    r = recipe(RECIPE, epochs=epochs)
    result = DemoResult(utterances=len(cache))
    for label, modalities, sub in RUNS if compare else RUNS[:1]:
        path = Path(run_dir) / sub
        say(f"[3/3] training {label}: 5 folds x {epochs} epochs, and its linear probe -> {path}")
        spec = RunSpec(
            model=model_config_for_cache(cache, MODEL.replace(modalities=modalities)),
            recipe=r,
            select=SELECT,
            cache_meta=cache.meta.to_dict(),
            cache_dir=str(Path(cache_dir).resolve()),
        )
        report = train_and_report(cache, spec, path, None, [r.seed], device, resume=True, say=say)
        result.summaries[label] = report["summary"]
        result.probes[label] = report["baselines"]["linear probe"]["summary"]
        result.fused_report = result.fused_report or report  # the first run is the fused model
    point_latest(Path(run_dir))  # `ksr eval` (the README's next step) then finds the demo's run
    result.seconds = time.perf_counter() - began
    return result


def comparison_table(result: DemoResult) -> str:
    """The KS-Transformer beside its linear probes, UA mean ± std over the 5 folds."""
    lines = ["| modalities | KS-Transformer UA % | linear probe UA % |", "|---|---|---|"]
    for label, s in result.summaries.items():
        p = result.probes[label]
        lines.append(
            f"| {label} | {100 * s['ua']:.2f} ± {100 * s['ua_std_over_folds']:.2f} | "
            f"{100 * p['ua']:.2f} ± {100 * p['ua_std_over_folds']:.2f} |"
        )
    return "\n".join(lines)
