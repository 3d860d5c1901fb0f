"""The training loop: one model per fold and seed, resumable epoch by epoch.

Every file of a fold (``ksr.fuse.train.runs`` names them) is written atomically, and
``state.pt`` last, so a run killed at any point resumes from its last complete epoch and (on
CPU, same seed) ends with the same numbers. An epoch is four steps: train on the shuffled
batches (:meth:`FoldTrainer.train_epoch`), score the selection set, commit the epoch's files
(:meth:`FoldTrainer.commit`), and report it (progress bar, ``on_epoch``, TensorBoard).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ...cache import Cache
from ...common import Ranks, atomic_save, faults, remove_dead_temps, signals, write_json
from ...common.files import DiskFullError
from ..model.architectures import build_model
from ..model.normalise import fit_standardizers, normalised_view
from ..model.tasks import split_outputs
from .attributes import attribute_targets, epoch_scores, history_entries, task_loss
from .chance import StallWatch
from .checkpoint import CheckpointError, load_state_strict, read_torch_file, save_checkpoint
from .folds import Split
from .inference import autocast, infer
from .losses import class_loss
from .probe import fit_probe_fold
from .recipes import build_optimizer, build_scheduler, warmup_factor
from .runs import (
    FoldFiles,
    FoldOutcome,
    RunError,
    RunSpec,
    cache_split,
    check_recorded_split,
    checkpoint_meta,
    fold_files,
    measured_on,
    write_split,
)
from .sampling import balanced_order, shuffled_order


class EpochBoard(Protocol):
    """Where a fold's curves go (``ksr.fuse.report.tensorboard.TensorBoard`` is one)."""

    def open(self, seed: int, fold: int, first_epoch: int = 0, protocol: str = "session") -> Any: ...


def epoch_batches(
    indices: np.ndarray, batch_size: int, generator: torch.Generator, ranks: Ranks, labels: np.ndarray | None = None
) -> list[np.ndarray]:
    """One epoch of shuffled global batches; each rank takes every world-th utterance of each.
    With ``labels`` (the classes of ``indices``) the epoch is class-balanced (``sampling``).

    Every rank draws the same permutation from the same generator, so the global batches (and
    the shuffle state saved for resuming) are those of a single-process run.
    """
    order = shuffled_order(indices, generator) if labels is None else balanced_order(indices, labels, generator)
    return [order[i : i + batch_size][ranks.rank :: ranks.world] for i in range(0, len(order), batch_size)]


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
    tensorboard: EpochBoard | None = None,
) -> FoldOutcome:
    """Train (or resume) one fold; writes its folder under ``run_dir`` (rank 0 writes), and with
    ``tensorboard`` its curves, the test set's scores among them."""
    files = fold_files(run_dir, seed, fold, spec.protocol)
    split = cache_split(cache, spec, fold, seed)
    cache = normalised_view(cache, spec.model)  # speaker_norm: each speaker's own statistics
    selection = split.test if spec.select == "test" else split.valid  # "last" still reports validation
    if len(selection) == 0:
        raise RunError(f"fold {fold}: the {spec.select} set is empty; raise --val-fraction or use --select test")
    if ranks.main:
        remove_dead_temps(files.root)  # writes a killed run never finished
        if resume:
            check_recorded_split(files.root, split, cache.ids)
        write_split(files.root, split, spec.select, cache.ids)
    if spec.model.architecture == "probe":
        return fit_probe_fold(cache, spec, files, split, selection, fold, seed, device, ranks)
    trainer = FoldTrainer(cache, spec, split, fold, seed, device, amp, ranks)
    trainer.restore(files, resume)
    board = None
    if tensorboard is not None and ranks.main:
        board = tensorboard.open(seed, fold, trainer.start_epoch, spec.protocol)
    where = f"seed {seed} " + ("official split" if spec.protocol == "split" else f"fold {fold}")
    watch = StallWatch(where, cache.labels[split.train], spec.recipe, spec.model)
    began = time.perf_counter()
    epochs = tqdm(
        range(trainer.start_epoch, spec.recipe.epochs),
        initial=trainer.start_epoch,
        total=spec.recipe.epochs,
        desc=f"fold {fold}",
        unit="epoch",
        disable=not (progress and ranks.main),
        leave=False,
    )
    try:
        with signals.sigterm_raises():  # SIGTERM as SIGINT: the epoch under way is abandoned
            for epoch in epochs:
                record, sel = trainer.run_epoch(epoch, selection)
                if board is not None:  # eval-mode passes draw no random numbers: training is unchanged
                    test = None if spec.select == "test" else trainer.scored(split.test, "test")
                    board.epoch(epoch, record, test)
                trainer.commit(files, epoch, sel)
                epochs.set_postfix(loss=f"{record['train_loss']:.3f}", **{spec.metric: f"{sel[spec.metric]:.3f}"})
                if (stall := watch.check(epoch, record["train_loss"])) and ranks.main:
                    tqdm.write(f"warning: {stall}", file=sys.stderr)  # now, not only in the report
                if on_epoch is not None:
                    on_epoch(epoch, record)
    except DiskFullError as e:
        raise RunError(f"{e}; then continue with the same command and --resume") from None
    except signals.Terminated:
        raise RunError(
            f"stopped by SIGTERM in fold {fold}, epoch {trainer.saved + 1} of {spec.recipe.epochs}: the "
            f"{trainer.saved} finished epoch(s) are saved; continue with the same command and --resume"
        ) from None
    finally:
        if board is not None:
            board.close()
    best = trainer.best
    return FoldOutcome(fold, seed, best["epoch"], best["value"], len(trainer.history), time.perf_counter() - began)


class FoldTrainer:
    """One fold's model, optimiser, schedule and shuffle, and the history of its epochs."""

    def __init__(
        self,
        cache: Cache,
        spec: RunSpec,
        split: Split,
        fold: int,
        seed: int,
        device: torch.device,
        amp: bool,
        ranks: Ranks,
    ) -> None:
        self.cache, self.spec, self.split, self.fold, self.seed = cache, spec, split, fold, seed
        self.device, self.amp, self.ranks = device, amp, ranks
        torch.manual_seed(seed)
        self.model = build_model(spec.model).to(device)
        fit_standardizers(self.model, cache, split.train)  # input_norm="standardize" only: training statistics
        self.optimizer = build_optimizer(self.model.parameters(), spec.recipe)
        self.scheduler = build_scheduler(self.optimizer, spec.recipe)
        r, train_labels = spec.recipe, cache.labels[split.train]
        self.loss_fn = class_loss(r.loss, r.focal_gamma, train_labels, spec.model.num_classes)
        self.batch_labels = train_labels if r.sampler == "balanced" else None  # None: plain shuffle
        self.shuffle = torch.Generator().manual_seed(seed * 1000 + fold)
        self.history: list[dict] = []
        self.best: dict[str, Any] = {"epoch": -1, "value": -1.0}
        self.start_epoch = 0
        self.saved = 0  # epochs committed to the fold's files
        self.network = self.model
        if ranks.world > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None
            )

    def restore(self, files: FoldFiles, resume: bool) -> None:
        """Continue from the fold's ``state.pt`` (only with ``resume``: a trained fold is never
        trained over silently)."""
        if not files.state.exists():
            return
        if not resume:
            raise RunError(
                f"{files.root} already holds a trained fold; pass --resume to continue it or choose a new --run"
            )
        try:
            state = read_training_state(files.state)
            load_state_strict(self.model, state["model"], str(files.state))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (CheckpointError, ValueError, KeyError) as e:
            raise RunError(
                f"cannot resume fold {self.fold}: {e} (or remove {files.root} to train the fold again)"
            ) from None
        torch.set_rng_state(state["torch_rng"])
        self.shuffle.set_state(state["shuffle_rng"])
        self.history, self.best = state["history"], state["best"]
        self.start_epoch = self.saved = state["epoch"] + 1

    def run_epoch(self, epoch: int, selection: np.ndarray) -> tuple[dict, dict]:
        """Train one epoch, then score the selection set: (the epoch's history record, its scores)."""
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = self.train_epoch(epoch, lr)
        selected = infer(self.model, self.cache, selection, self.spec.recipe.batch_size, self.device, self.amp)
        sel = epoch_scores(self.cache, selection, selected, self.spec.model)
        on = measured_on(self.spec)
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            f"{on}_loss": selected.loss,
            **history_entries(sel, self.spec.model, on),
        }
        self.history.append(record)
        return record, sel

    def train_epoch(self, epoch: int, lr: float) -> float:
        """One pass over the shuffled training batches; the mean training loss (over all ranks)."""
        r, model, optimizer = self.spec.recipe, self.model, self.optimizer
        model.train()
        loss_sum, seen = 0.0, 0
        parts = epoch_batches(self.split.train, r.batch_size, self.shuffle, self.ranks, self.batch_labels)
        # The next batches are read (and copied to the device) while this one computes.
        for step_in_epoch, batch in enumerate(self.cache.batches(parts, self.device)):
            faults.point("train-batch")  # test-only: the reliability tests kill the run here
            if r.warmup_epochs:  # per step, on top of the per-epoch schedule
                factor = warmup_factor(r, epoch * len(parts) + step_in_epoch, len(parts))
                for group in optimizer.param_groups:
                    group["lr"] = lr * factor
            with autocast(self.device, self.amp):
                logits = self.network(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask)
            outputs = split_outputs(logits, self.spec.model)  # task attributes/both: the attribute values follow
            logits = logits[..., : self.spec.model.num_classes]  # the class columns (all of them for task classes)
            loss = self.loss_fn(logits.float(), batch.labels)  # plain cross-entropy by default
            loss = task_loss(loss, outputs, attribute_targets(batch, self.cache, self.spec.model), self.spec.model)
            value = loss.item()
            if not math.isfinite(value):  # NaN or inf: nothing after this step would mean anything
                raise RunError(
                    f"fold {self.fold}, epoch {epoch + 1}: the training loss is {value}; lower --lr, or check the "
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
        self.scheduler.step()
        if self.ranks.world > 1:  # the epoch's loss over all ranks' shares
            totals = torch.tensor([loss_sum, float(seen)], dtype=torch.float64)
            torch.distributed.all_reduce(totals)
            loss_sum, seen = totals[0].item(), int(totals[1].item())
        return loss_sum / max(seen, 1)

    def scored(self, indices: np.ndarray, name: str) -> dict[str, float]:
        """``{name}_loss`` and ``{name}_<metric>`` of the model on the cache utterances ``indices``."""
        if len(indices) == 0:
            return {}
        out = infer(self.model, self.cache, indices, self.spec.recipe.batch_size, self.device, self.amp)
        s = epoch_scores(self.cache, indices, out, self.spec.model)
        return {f"{name}_loss": out.loss, **history_entries(s, self.spec.model, name)}

    def commit(self, files: FoldFiles, epoch: int, sel: dict) -> None:
        """Write the epoch's files, all or none (a SIGTERM waits for them): best.pt when the epoch
        is selected, last.pt, history.json, and state.pt last (a crash before it redoes the epoch,
        after it resumes past it)."""
        spec = self.spec
        meta = checkpoint_meta(spec, self.split, self.fold, self.seed, epoch)
        improved = spec.select == "last" or sel[spec.metric] > self.best["value"]
        if improved:
            self.best = {"epoch": epoch, "value": sel[spec.metric]}
        with signals.deferred():
            if self.ranks.main:
                if improved:
                    save_checkpoint(files.best, self.model, {**meta, "value": sel[spec.metric]})
                save_checkpoint(files.last, self.model, meta)
                write_json(files.history, {"best": self.best, "epochs": self.history})
                atomic_save(
                    {
                        "model": self.model.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "shuffle_rng": self.shuffle.get_state(),
                        "history": self.history,
                        "best": self.best,
                        "epoch": epoch,
                    },
                    files.state,
                )
            self.saved = epoch + 1
        self.ranks.barrier()


STATE_KEYS = ("model", "optimizer", "scheduler", "torch_rng", "shuffle_rng", "history", "best", "epoch")


def read_training_state(path: Path) -> dict[str, Any]:
    """A fold's ``state.pt``, checked (CRC, weights_only, every key present) before any of it is used."""
    state = read_torch_file(path)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ksr training state (missing {', '.join(missing)})")
    return state
