"""The training loop: one model per fold and seed, resumable epoch by epoch.

Every file of a fold (``ksr.fuse.runs`` names them) is written atomically, and ``state.pt``
last, so a run killed at any point resumes from its last complete epoch and (on CPU, same seed)
ends with the same numbers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..cache import Cache
from ..common import Ranks, atomic_save, faults, remove_dead_temps, signals, write_json
from ..common.files import DiskFullError
from .architectures import build_model
from .baselines import PROBE_C_GRID, fit_probe, pooled_features
from .checkpoint import CheckpointError, load_state_strict, read_torch_file, save_checkpoint
from .inference import autocast, infer
from .metrics import METRICS, scores
from .normalise import fit_standardizers
from .recipes import build_optimizer, build_scheduler, warmup_factor
from .runs import RunError, RunSpec, cache_split, check_recorded_split, fold_dir, write_split
from .tensorboard import TensorBoard


def measured_on(spec: RunSpec) -> str:
    """The set each epoch is scored on: the test set under --select test, else validation."""
    return "test" if spec.select == "test" else "valid"


def epoch_batches(indices: np.ndarray, batch_size: int, generator: torch.Generator, ranks: Ranks) -> list[np.ndarray]:
    """One epoch of shuffled global batches; each rank takes every world-th utterance of each.

    Every rank draws the same permutation from the same generator, so the global batches (and
    the shuffle state saved for resuming) are those of a single-process run.
    """
    order = indices[torch.randperm(len(indices), generator=generator).numpy()]
    return [order[i : i + batch_size][ranks.rank :: ranks.world] for i in range(0, len(order), batch_size)]


@dataclass
class FoldOutcome:
    fold: int
    seed: int
    best_epoch: int
    best_value: float
    epochs_run: int
    seconds: float


def train_fold(
    cache: Cache,
    spec: RunSpec,
    run_dir: Path,
    fold: int,
    seed: int,
    device: torch.device,
    resume: bool = False,
    amp: bool = False,
    progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
    ranks: Ranks = Ranks(),
    tensorboard: TensorBoard | None = None,
) -> FoldOutcome:
    """Train (or resume) one fold; writes its folder under ``run_dir`` (rank 0 writes), and with
    ``tensorboard`` its curves, the test set's scores among them."""
    out = fold_dir(run_dir, seed, fold, spec.protocol)
    split = cache_split(cache, spec, fold, seed)
    selection = split.test if spec.select == "test" else split.valid  # "last" still reports validation
    if len(selection) == 0:
        raise RunError(f"fold {fold}: the {spec.select} set is empty; raise --val-fraction or use --select test")
    if ranks.main:
        remove_dead_temps(out)  # writes a killed run never finished
        if resume:
            check_recorded_split(out, split, cache.ids)
        write_split(out, split, spec.select, cache.ids)

    if spec.model.architecture == "probe":
        return fit_probe_fold(cache, spec, out, split, selection, fold, seed, device, ranks)
    r = spec.recipe
    torch.manual_seed(seed)
    model = build_model(spec.model).to(device)
    fit_standardizers(model, cache, split.train)  # input_norm="standardize" only: training utterances' statistics
    optimizer = build_optimizer(model.parameters(), r)
    scheduler = build_scheduler(optimizer, r)
    shuffle = torch.Generator().manual_seed(seed * 1000 + fold)
    history: list[dict] = []
    best = {"epoch": -1, "value": -1.0}
    start_epoch = 0
    state_path = out / "state.pt"
    if state_path.exists():
        if not resume:
            raise RunError(f"{out} already holds a trained fold; pass --resume to continue it or choose a new --run")
        try:
            state = read_training_state(state_path)
            load_state_strict(model, state["model"], str(state_path))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (CheckpointError, ValueError, KeyError) as e:
            raise RunError(f"cannot resume fold {fold}: {e} (or remove {out} to train the fold again)") from None
        torch.set_rng_state(state["torch_rng"])
        shuffle.set_state(state["shuffle_rng"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1

    trainer = model
    if ranks.world > 1:
        trainer = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    began = time.perf_counter()
    epochs = tqdm(
        range(start_epoch, r.epochs),
        initial=start_epoch,
        total=r.epochs,
        desc=f"fold {fold}",
        unit="epoch",
        disable=not (progress and ranks.main),
        leave=False,
    )
    saved = start_epoch  # epochs committed to the fold's files
    board = tensorboard.open(seed, fold, start_epoch, spec.protocol) if tensorboard is not None and ranks.main else None
    try:
        with signals.sigterm_raises():  # SIGTERM as SIGINT: the epoch under way is abandoned
            for epoch in epochs:
                model.train()
                lr = optimizer.param_groups[0]["lr"]
                loss_sum, seen = 0.0, 0
                parts = epoch_batches(split.train, r.batch_size, shuffle, ranks)
                for step_in_epoch, part in enumerate(parts):
                    faults.point("train-batch")  # test-only: the reliability tests kill the run here
                    if r.warmup_epochs:  # per step, on top of the per-epoch schedule
                        factor = warmup_factor(r, epoch * len(parts) + step_in_epoch, len(parts))
                        for group in optimizer.param_groups:
                            group["lr"] = lr * factor
                    batch = cache.batch(part).to(device)
                    with autocast(device, amp):
                        logits = trainer(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask)
                    loss = F.cross_entropy(logits.float(), batch.labels)
                    value = loss.item()
                    if not math.isfinite(value):  # NaN or inf: nothing after this step would mean anything
                        raise RunError(
                            f"fold {fold}, epoch {epoch + 1}: the training loss is {value}; lower --lr, or check the "
                            f"cache for NaN/inf features (ksr cache verify); epochs before this one are kept (--resume)"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # under DDP, gradients are averaged over the ranks here
                    optimizer.step()
                    loss_sum += value * len(batch)
                    seen += len(batch)
                if r.warmup_epochs:  # the schedule steps from its own rate, not the warmed-up one
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                scheduler.step()
                if ranks.world > 1:  # the epoch's loss over all ranks' shares
                    totals = torch.tensor([loss_sum, float(seen)], dtype=torch.float64)
                    torch.distributed.all_reduce(totals)
                    loss_sum, seen = totals[0].item(), int(totals[1].item())
                selected = infer(model, cache, selection, r.batch_size, device, amp)
                sel = scores(cache.labels[selection], selected.preds, spec.model.num_classes)
                record = {
                    "epoch": epoch,
                    "lr": lr,
                    "train_loss": loss_sum / max(seen, 1),
                    f"{measured_on(spec)}_loss": selected.loss,
                    **{f"{measured_on(spec)}_{m}": sel[m] for m in METRICS},
                }
                history.append(record)
                if board is not None:  # eval-mode passes draw no random numbers: training is unchanged
                    test = (
                        None if spec.select == "test" else scored(model, cache, split.test, spec, device, amp, "test")
                    )
                    board.epoch(epoch, record, test)
                meta = {
                    "fold": fold,
                    "seed": seed,
                    "epoch": epoch,
                    "select": spec.select,
                    "metric": spec.metric,
                    "test_group": split.test_group,
                    "protocol": spec.protocol,
                    # Encoders, classes, max lengths: what `ksr predict` needs to rebuild the features.
                    "cache_meta": spec.cache_meta,
                }
                improved = spec.select == "last" or sel[spec.metric] > best["value"]
                if improved:
                    best = {"epoch": epoch, "value": sel[spec.metric]}
                with signals.deferred():  # the epoch's files all or none: a SIGTERM waits for them
                    if ranks.main:
                        if improved:
                            save_checkpoint(out / "best.pt", model, {**meta, "value": sel[spec.metric]})
                        save_checkpoint(out / "last.pt", model, meta)
                        write_json(out / "history.json", {"best": best, "epochs": history})
                        # Written last: a crash before this line redoes the epoch, after it resumes past it.
                        atomic_save(
                            {
                                "model": model.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(),
                                "torch_rng": torch.get_rng_state(),
                                "shuffle_rng": shuffle.get_state(),
                                "history": history,
                                "best": best,
                                "epoch": epoch,
                            },
                            state_path,
                        )
                    saved = epoch + 1
                ranks.barrier()
                epochs.set_postfix(loss=f"{record['train_loss']:.3f}", **{spec.metric: f"{sel[spec.metric]:.3f}"})
                if on_epoch is not None:
                    on_epoch(epoch, record)
    except DiskFullError as e:
        raise RunError(f"{e}; then continue with the same command and --resume") from None
    except signals.Terminated:
        raise RunError(
            f"stopped by SIGTERM in fold {fold}, epoch {saved + 1} of {r.epochs}: the {saved} finished epoch(s) "
            f"are saved; continue with the same command and --resume"
        ) from None
    finally:
        if board is not None:
            board.close()
    return FoldOutcome(fold, seed, best["epoch"], best["value"], len(history), time.perf_counter() - began)


def scored(model, cache: Cache, indices: np.ndarray, spec: RunSpec, device, amp: bool, name: str) -> dict[str, float]:
    """``{name}_loss`` and ``{name}_<metric>`` of the model on the cache utterances ``indices``."""
    if len(indices) == 0:
        return {}
    out = infer(model, cache, indices, spec.recipe.batch_size, device, amp)
    s = scores(cache.labels[indices], out.preds, spec.model.num_classes)
    return {f"{name}_loss": out.loss, **{f"{name}_{m}": s[m] for m in METRICS}}


def fit_probe_fold(
    cache: Cache,
    spec: RunSpec,
    out: Path,
    split,
    selection: np.ndarray,
    fold: int,
    seed: int,
    device: torch.device,
    ranks: Ranks,
) -> FoldOutcome:
    """The probe baseline's "training": one scikit-learn fit per C of ``PROBE_C_GRID`` on the
    training utterances, the C whose model scores best on the selection set kept (as an epoch
    would be). Each C is recorded in history.json as one "epoch"; best.pt holds the chosen one."""
    began = time.perf_counter()
    if (out / "best.pt").exists() and (out / "history.json").exists():
        history = json.loads((out / "history.json").read_text())
        return FoldOutcome(fold, seed, history["best"]["epoch"], history["best"]["value"], len(history["epochs"]), 0.0)
    model = build_model(spec.model).to(device)
    features = pooled_features(model, cache, split.train)
    labels = cache.labels[split.train]
    history, best = [], {"epoch": -1, "value": -1.0}
    for epoch, c in enumerate(PROBE_C_GRID):
        fit_probe(model, features, labels, c, seed)
        selected = infer(model, cache, selection, 256, device)
        sel = scores(cache.labels[selection], selected.preds, spec.model.num_classes)
        train_loss = infer(model, cache, split.train, 256, device).loss
        history.append(
            {
                "epoch": epoch,
                "C": c,
                "train_loss": train_loss,
                f"{measured_on(spec)}_loss": selected.loss,
                **{f"{measured_on(spec)}_{m}": sel[m] for m in METRICS},
            }
        )
        if sel[spec.metric] > best["value"]:
            best = {"epoch": epoch, "value": sel[spec.metric]}
            if ranks.main:
                save_checkpoint(
                    out / "best.pt",
                    model,
                    {
                        "fold": fold,
                        "seed": seed,
                        "epoch": epoch,
                        "C": c,
                        "select": spec.select,
                        "metric": spec.metric,
                        "test_group": split.test_group,
                        "protocol": spec.protocol,
                        "cache_meta": spec.cache_meta,
                        "value": sel[spec.metric],
                    },
                )
    if ranks.main:
        save_checkpoint(
            out / "last.pt",
            model,
            {"fold": fold, "seed": seed, "epoch": len(history) - 1, "cache_meta": spec.cache_meta},
        )
        write_json(out / "history.json", {"best": best, "epochs": history})  # written last: the fold is done
    return FoldOutcome(fold, seed, best["epoch"], best["value"], len(history), time.perf_counter() - began)


STATE_KEYS = ("model", "optimizer", "scheduler", "torch_rng", "shuffle_rng", "history", "best", "epoch")


def read_training_state(path: Path) -> dict[str, Any]:
    """A fold's ``state.pt``, checked (CRC, weights_only, every key present) before any of it is used."""
    state = read_torch_file(path)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ksr training state (missing {', '.join(missing)})")
    return state
