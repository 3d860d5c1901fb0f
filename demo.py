"""``make demo``: the whole pipeline on the built-in corpus, no downloads.

Generates the demo corpus (``ksr.extract.demo``; docs/demo.md), extracts it with the tiny
built-in encoders, trains a small KS-Transformer on every leave-one-session-out fold, and
optionally audio-only and text-only models beside it. Every step resumes: a rerun reuses the
corpus, the cache and finished folds. It joins the stages, so it lives beside ``cli.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import open_cache
from .common import resolve_device
from .extract.demo import make_demo_corpus
from .extract.pipeline import extract_corpus
from .fuse.config import ModelConfig
from .fuse.experiment import train_and_report
from .fuse.recipes import recipe
from .fuse.runs import RunSpec, model_config_for_cache, point_latest

# The demo's small model and quick schedule, chosen to finish in minutes on 2 CPU cores: one layer
# per stage, AdamW (a departure from both presets), no attention-weight dropout, and audio cut at
# 230 frames (2.3 s) instead of 460. Dims come from the tiny encoders' cache.
EPOCHS = 12
LR = 4e-3
AUDIO_FRAMES = 230
MODEL = ModelConfig(
    num_layers=(1, 1, 1),
    num_heads=4,
    audio_ffn_dim=64,
    text_ffn_dim=64,
    max_positions=512,
    attention_dropout=0.0,
    classifier_dropout=0.2,
)
# (label, modalities, run folder under the demo's run directory)
RUNS = (("fused", "both", ""), ("audio only", "audio", "audio-only"), ("text only", "text", "text-only"))


@dataclass
class DemoResult:
    utterances: int
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> report summary
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
    say(f"[2/3] extracting features with tiny-audio + tiny-text into {cache_dir}")
    summary = extract_corpus(manifest, cache_dir, "tiny-audio", "tiny-text", corpus="demo", max_audio_len=AUDIO_FRAMES)
    say(summary.format())
    cache = open_cache(cache_dir, progress=False)
    device = resolve_device("auto")
    r = recipe("official", optimizer="adamw", epochs=epochs, lr=LR, batch_size=16)
    result = DemoResult(utterances=len(cache))
    for label, modalities, sub in RUNS if compare else RUNS[:1]:
        path = Path(run_dir) / sub
        say(f"[3/3] training {label}: 5 folds x {epochs} epochs -> {path}")
        spec = RunSpec(
            model=model_config_for_cache(cache, MODEL.replace(modalities=modalities)),
            recipe=r,
            cache_meta=cache.meta.to_dict(),
            cache_dir=str(Path(cache_dir).resolve()),
        )
        report = train_and_report(cache, spec, path, None, [r.seed], device, resume=True, say=say)
        result.summaries[label] = report["summary"]
        result.fused_report = result.fused_report or report  # the first run is the fused model
    point_latest(Path(run_dir))  # `ksr eval` (the README's next step) then finds the demo's run
    result.seconds = time.perf_counter() - began
    return result
