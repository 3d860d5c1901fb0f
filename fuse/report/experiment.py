"""Whole experiments: every fold and seed of a run, then its report; sweeps of runs (ablations)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ...cache import Cache, open_cache
from ...common import Ranks, join_process_group, resolve_device, write_json, write_text
from ..model.config import ARCHITECTURES, DEPARTURES, ModelConfig, apply_departure
from ..model.tasks import learns_classes
from ..train.attributes import default_metric, selection_metrics
from ..train.metrics import METRICS
from ..train.recipes import Recipe
from ..train.runs import (
    RunError,
    RunSpec,
    baseline_dir,
    check_protocol,
    fold_lock,
    model_config_for_cache,
    num_folds,
    prepare_run,
    weighted_baseline_dir,
)
from ..train.training import train_fold
from .compare import ABLATION_CSV_COLUMNS, ablation_comparison_lines, ablation_csv_cells, against_first
from .evaluation import attach_baseline, evaluate_run, fold_test_warning
from .render import write_report
from .stats import Bootstrap
from .tensorboard import TensorBoard


def _on_off(value: str) -> str:
    if value not in ("on", "off"):
        raise ValueError("write on or off")
    return "interaction+fusion" if value == "on" else "none"


ABLATIONS = {
    # kind: (default values, how a value changes the model config, label)
    "keep-rate": (
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        lambda cfg, v: cfg.replace(keep_rate=float(v)),
        "keep rate",
    ),
    "ccabs": (
        [0, 1, 2, 3, 4],
        lambda cfg, v: cfg.replace(num_layers=(cfg.num_layers[0], int(v), cfg.num_layers[2])),
        "CCABs",
    ),
    "key-sparse": (["on", "off"], lambda cfg, v: cfg.replace(key_sparse=_on_off(v)), "key-sparse"),
    "modality": (["both", "audio", "text"], lambda cfg, v: cfg.replace(modalities=str(v)), "modalities"),
    # The public model against each named departure from it (fuse.model.config.DEPARTURES).
    "departures": (list(DEPARTURES), apply_departure, "departure"),
    # The paper's claim, "KS-T beats the usual recipes": the model against its baselines.
    "baselines": (list(ARCHITECTURES), lambda cfg, v: cfg.replace(architecture=str(v)), "model"),
}


@dataclass
class Setup:
    """What a training command works with, made once from its options."""

    cache: Cache
    spec: RunSpec
    device: torch.device
    ranks: Ranks


def open_training(
    cache_dir: str | Path,
    recipe: Recipe,
    model_changes: dict[str, Any],
    *,
    protocol: str = "session",
    select: str = "valid",
    metric: str | None = None,
    val_fraction: float = 0.1,
    validation: str = "utterances",
    device: str = "auto",
    cache_mode: str = "auto",
    progress: bool | None = None,
) -> Setup:
    """Device, ranks (under torchrun), the cache and the RunSpec: the default model with
    ``model_changes`` and the cache's dims and classes."""
    dev = resolve_device(device)
    ranks = join_process_group(dev)  # under torchrun: DistributedDataParallel over the ranks
    cache = open_cache(
        cache_dir,
        mode=cache_mode,
        device=dev if dev.type == "cuda" else "cpu",
        progress=progress if ranks.main else False,
        say=(lambda line: print(line, file=sys.stderr)) if ranks.main else None,  # where the features live, and why
    )
    model = model_config_for_cache(cache, ModelConfig(), **model_changes)
    metric = metric or default_metric(model)
    if metric not in selection_metrics(model):
        raise RunError(
            f"--metric {metric} does not score task {model.task}: choose {', '.join(selection_metrics(model))}"
        )
    spec = RunSpec(
        model=model,
        recipe=recipe,
        protocol=protocol,
        select=select,
        metric=metric,
        val_fraction=val_fraction,
        validation=validation,
        cache_meta=cache.meta.to_dict(),
        cache_dir=str(Path(cache_dir).resolve()),
    )
    return Setup(cache, spec, dev, ranks)


def train_and_report(
    cache: Cache,
    spec: RunSpec,
    run_dir: Path,
    folds: list[int] | None,
    seeds: list[int],
    device: torch.device,
    ranks: Ranks = Ranks(),
    resume: bool = False,
    amp: bool = True,
    say: Callable[[str], Any] = print,
    baseline: bool = True,
    bootstrap: Bootstrap = Bootstrap(),
    tensorboard: TensorBoard | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Train every requested fold and seed, then evaluate and write the report (rank 0).

    With ``baseline`` (and a model that is not itself the probe), the linear probe is fitted on
    the same folds, seeds and selection into RUN/baseline-probe (seconds), and the report shows
    it beside the model. ``tensorboard`` receives the model's curves (not the probe's)."""
    check_protocol(cache, spec, folds)
    available = num_folds(cache, spec.protocol)
    missing = [f for f in folds or [] if not 1 <= f <= available]
    if missing:  # before anything is written: a failed start leaves no run behind
        raise RunError(
            f"fold {missing[0]} does not exist: the {spec.protocol} protocol has folds 1..{available} on this cache"
        )
    if ranks.main:
        prepare_run(run_dir, spec, resume, seeds, folds)
    ranks.barrier()
    fold_list = folds or list(range(1, available + 1))
    for seed in seeds:
        for fold in fold_list:
            with fold_lock(run_dir, seed, fold, spec.protocol) if ranks.main else nullcontext():
                out = train_fold(
                    cache,
                    spec,
                    run_dir,
                    fold,
                    seed,
                    device,
                    resume=resume,
                    amp=amp,
                    ranks=ranks,
                    tensorboard=tensorboard,
                    progress=progress,
                )
            if ranks.main:
                where = "official split" if spec.protocol == "split" else f"fold {fold}"
                say(
                    f"seed {seed} {where}: kept epoch {out.best_epoch}, {'test' if spec.select == 'test' else 'valid'} {spec.metric} "
                    f"{100 * out.best_value:.2f}% ({out.seconds:.0f} s)"
                )
                if below := fold_test_warning(run_dir, cache, spec, fold, seed, device):
                    say(f"warning: {below}")
    ranks.barrier()
    if not ranks.main:
        return None
    report = evaluate_run(run_dir, cache, spec, device=device, bootstrap=bootstrap)
    if baseline and spec.model.architecture != "probe" and learns_classes(spec.model):
        # the class baselines; the attributes' (ridge) is in the report
        for name, probe_dir, probe_loss in probe_baselines(spec, run_dir):
            probe_recipe = replace(spec.recipe, loss=probe_loss, sampler="shuffle")
            probe_model = spec.model.replace(architecture="probe", task="classes", attributes=())
            probe_spec = replace(spec, model=probe_model, recipe=probe_recipe)
            prepare_run(probe_dir, probe_spec, resume=True)
            for seed in seeds:
                for fold in fold_list:
                    with fold_lock(probe_dir, seed, fold, spec.protocol):
                        train_fold(cache, probe_spec, probe_dir, fold, seed, device, resume=True, ranks=Ranks())
            probe_report = evaluate_run(probe_dir, cache, probe_spec, device=device, bootstrap=bootstrap)
            write_report(probe_report, probe_dir)
            attach_baseline(report, name, probe_report)
    write_report(report, run_dir)
    return report


def probe_baselines(spec: RunSpec, run_dir: Path) -> list[tuple[str, Path, str]]:
    """(name, folder, loss) of the probes fitted beside a run: the plain linear probe, and for a
    run trained for imbalanced classes (any loss but plain cross-entropy, or the balanced
    sampler) the class-weighted one too (docs/learning.md, "Imbalanced classes")."""
    probes = [("linear probe", baseline_dir(run_dir), "ce")]
    if spec.recipe.loss != "ce" or spec.recipe.sampler == "balanced":
        probes.append(("class-weighted linear probe", weighted_baseline_dir(run_dir), "weighted-ce"))
    return probes


def sweep_values(kind: str, values: list[str] | None) -> list:
    if kind not in ABLATIONS:
        raise ValueError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}")
    return values or ABLATIONS[kind][0]


def run_ablation(
    kind: str,
    values: list | None,
    cache: Cache,
    base: RunSpec,
    root: Path,
    folds: list[int] | None,
    seeds: list[int],
    device: torch.device,
    resume: bool = False,
    amp: bool = True,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """One run per value under ``root``, then a summary table (JSON, Markdown, CSV) across them."""
    _, change, label = ABLATIONS[kind]
    models = {}
    for value in sweep_values(kind, values):  # every value is checked before the first run starts
        try:
            models[value] = change(base.model, value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{label} value {value!r} does not make a model: {e}") from None
    rows, reports = [], []
    for value, model in models.items():
        spec = RunSpec(**{**base.__dict__, "model": model})
        run_dir = root / f"{kind}-{value}"
        say(f"== {label} = {value} -> {run_dir}")
        report = train_and_report(
            cache, spec, run_dir, folds, seeds, device, resume=resume, amp=amp, say=say, baseline=False
        )
        reports.append(report)
        s = report["summary"]
        rows.append(
            {
                "value": value,
                "run": str(run_dir),
                **{m: s[m] for m in METRICS},
                **{f"{m}_std_over_folds": s[f"{m}_std_over_folds"] for m in METRICS},
            }
        )
    comparison = against_first(reports)  # each row against the first, on the same test utterances
    for row, c in zip(rows[1:], comparison["comparisons"], strict=True):
        row["vs_first"] = {"metrics": c["metrics"], "mcnemar": c["mcnemar"]}
    comparison.pop("comparisons")
    summary = {
        "ablation": kind,
        "label": label,
        "select": base.select,
        "protocol": base.protocol,
        "rows": rows,
        "comparison": comparison,
    }
    write_json(root / "ablation.json", summary)
    write_text(root / "ablation.md", ablation_markdown(summary))
    write_text(
        root / "ablation.csv",
        ",".join(("value", *METRICS, *ABLATION_CSV_COLUMNS))
        + "\n"
        + "".join(
            ",".join([str(r["value"]), *(f"{r[m]:.6f}" for m in METRICS), *ablation_csv_cells(r)]) + "\n" for r in rows
        ),
    )
    return summary


def ablation_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# ablation: {summary['label']}",
        "",
        f"Protocol {summary['protocol']}, model selection on {summary['select']}"
        + (" (TEST-SET SELECTION: optimistic)" if summary["select"] == "test" else "")
        + (
            "; all test splits pooled, mean ± std over seeds."
            if summary["protocol"] == "split"
            else "; mean ± std over folds."
        ),
        "",
        f"| {summary['label']} | WA % | UA % | macro F1 % | weighted F1 % |",
        "|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['value']} | "
            + " | ".join(f"{100 * r[m]:.2f} ± {100 * r[m + '_std_over_folds']:.2f}" for m in METRICS)
            + " |"
        )
    lines += ablation_comparison_lines(summary)
    return "\n".join(lines) + "\n"
