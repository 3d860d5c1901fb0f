"""``make demo``: the whole pipeline on the built-in corpus, no downloads.

Generates the demo corpus (``ksr.extract.corpora.demo``; docs/demo.md), extracts it with the tiny
built-in encoders, trains a small KS-Transformer with the ``ksr`` recipe on every
leave-one-session-out fold, and audio-only and text-only models beside it; every one of the
three also gets its linear-probe baseline on the same folds. The fused model learns the classes
and the corpus's attributes together (task ``both``), its CCCs beside the ridge baseline. Every step resumes: a rerun reuses
the corpus, the cache and finished folds. It joins the stages, so it lives beside ``cli/``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import open_cache
from .common import KsrError, Ranks, join_process_group, resolve_device
from .extract.corpora.demo import make_demo_corpus
from .extract.pipeline import extract_corpus
from .fuse.model.config import MODEL_SIZES, ModelConfig
from .fuse.report.experiment import train_and_report
from .fuse.train.recipes import PRESET_MODEL_SETTINGS, recipe
from .fuse.train.runs import RunSpec, model_config_for_cache, point_latest

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
    **MODEL_SIZES["small"],  # the named size `ksr train --size small` gives
    **PRESET_MODEL_SETTINGS[RECIPE],  # standardised inputs, classifier dropout 0.2
)
# The ksr recipe's 24 epochs and 4 more: with the batches shared by two processes (below) the
# demo has the time, and the study's 24-epoch runs were the ones closest to 80% (docs/learning.md).
EPOCHS = recipe(RECIPE).epochs + 4
# The fused model learns the classes and the attributes (activation from the voice, valence from
# the words, dominance from both) in one model; the unimodal ones the classes only.
FUSED_TASK = "both"
# (label, modalities, run folder under the demo's run directory)
RUNS = (("fused", "both", ""), ("audio only", "audio", "audio-only"), ("text only", "text", "text-only"))


@dataclass
class DemoResult:
    utterances: int
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> the model's summary
    probes: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> its linear probe's summary
    fused_report: dict[str, Any] | None = None
    seconds: float = 0.0
    attributes: dict[str, Any] | None = None  # the fused report's attribute section (model and ridge)


def run_demo(
    data: str | Path,
    cache_dir: str | Path,
    run_dir: str | Path,
    epochs: int = EPOCHS,
    compare: bool = True,
    say: Callable[[str], Any] = print,
) -> DemoResult | None:
    """The demo; under torchrun (``ksr demo --processes N``) every rank calls it, rank 0 makes
    the corpus and the cache alone (the same cache as one process makes), then the ranks train
    each model together (DistributedDataParallel) and rank 0 reports. Other ranks return None."""
    began = time.perf_counter()
    device = resolve_device("auto")
    ranks = join_process_group(device)
    if not ranks.main:
        say = _silent
    if ranks.main:
        manifest = Path(data) / "manifest.csv"
        if not manifest.is_file() or "activation" not in manifest.read_text().partition("\n")[0]:
            say(f"[1/3] generating the demo corpus in {data}")
            make_demo_corpus(data, seed=0)
        else:
            say(f"[1/3] reusing the demo corpus in {data}")
        say(f"[2/3] extracting features with {' + '.join(ENCODERS)} into {cache_dir}")
        summary = extract_corpus(
            manifest, cache_dir, *ENCODERS, corpus="demo", max_audio_len=AUDIO_FRAMES, ranks=Ranks()
        )
        say(summary.format())
    ranks.barrier()
    cache = open_cache(cache_dir, progress=False)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # A model this small trains faster on one thread than on two, idle or busy: its ops are
        # too small to split (bench/results.md, "threads").
        torch.set_num_threads(1)
    try:
        return _train_all(cache, cache_dir, run_dir, device, epochs, compare, say, began, ranks)
    finally:
        torch.set_num_threads(threads)


def _silent(*args, **kwargs) -> None:
    """What ranks other than 0 say: nothing (rank 0 speaks for the run)."""


def _train_all(cache, cache_dir, run_dir, device, epochs, compare, say, began, ranks: Ranks) -> DemoResult | None:
    r = recipe(RECIPE, epochs=epochs)
    result = DemoResult(utterances=len(cache))
    on = f" on {ranks.world} processes" if ranks.world > 1 else ""
    for label, modalities, sub in RUNS if compare else RUNS[:1]:
        path = Path(run_dir) / sub
        say(f"[3/3] training {label}{on}: 5 folds x {epochs} epochs, and its linear probe -> {path}")
        task = FUSED_TASK if modalities == "both" else "classes"
        spec = RunSpec(
            model=model_config_for_cache(cache, MODEL.replace(modalities=modalities), task=task),
            recipe=r,
            select=SELECT,
            cache_meta=cache.meta.to_dict(),
            cache_dir=str(Path(cache_dir).resolve()),
        )
        report = train_and_report(cache, spec, path, None, [r.seed], device, ranks=ranks, resume=True, say=say)
        if report is None:  # not rank 0
            continue
        result.summaries[label] = report["summary"]
        result.probes[label] = report["baselines"]["linear probe"]["summary"]
        result.fused_report = result.fused_report or report  # the first run is the fused model
        result.attributes = result.attributes or report.get("attributes")
    if not ranks.main:
        return None
    point_latest(Path(run_dir))  # `ksr eval` (the README's next step) then finds the demo's run
    result.seconds = time.perf_counter() - began
    return result


def default_processes() -> int:
    """Training processes for the demo: one per core up to 2 on a CPU (its small model trains
    fastest on one thread per process; two processes share each batch), one with a GPU."""
    if torch.cuda.is_available():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(2, cores)


def run_under_torchrun(processes: int, demo_args: list[str]) -> None:
    """``ksr demo DEMO_ARGS`` in ``processes`` ranks through torch's own launcher (torchrun) on
    this machine. A rank that fails has said why in one line; the launcher's report of it is
    turned into one more line (DemoError) instead of its traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # each rank trains on one thread (and torchrun stays quiet)
    launch = ["--standalone", f"--nproc-per-node={processes}", "--module", "ksr.cli", "demo", *demo_args]
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(launch))
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        raise DemoError(
            f"the demo's {processes} processes stopped (exit status {codes}); see the lines above"
        ) from None


def lost_peer(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process ended (gloo's words for it)."""
    text = str(error)
    return "closed by peer" in text or "reset by peer" in text or "Broken pipe" in text


class DemoError(KsrError):
    """The demo's processes failed."""


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


def attribute_table(result: DemoResult) -> str:
    """The fused model's attribute CCCs beside the ridge baseline, mean ± std over the 5 folds."""
    a = result.attributes
    if not a:
        return ""
    names = a["names"]
    lines = ["| attributes (CCC) | mean | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for system, label in (("model", "KS-Transformer"), ("ridge", "ridge (probe features)")):
        s = a["systems"][system]["summary"]
        cells = [f"{s[k]:.3f} ± {s[k + '_std_over_folds']:.3f}" for k in ("ccc", *(f"ccc_{n}" for n in names))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
