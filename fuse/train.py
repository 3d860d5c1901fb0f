"""Training one model per fold on a feature cache, resumable epoch by epoch.

A run directory holds ``run.json`` (everything needed to redo the run: model config, recipe,
protocol, selection, the cache's metadata) and one folder per seed and fold::

    RUN/run.json
    RUN/seed123/fold5/split.json     which utterance ids train, validate, test
    RUN/seed123/fold5/state.pt       model, optimiser, scheduler, RNG states after the last epoch
    RUN/seed123/fold5/best.pt        the selected epoch's model (a ksr checkpoint)
    RUN/seed123/fold5/last.pt        the last epoch's model
    RUN/seed123/fold5/history.json   per-epoch loss, lr and selection metrics

Every file is written atomically, and ``state.pt`` last, so a run killed at any point resumes
from its last complete epoch and (on CPU, same seed) ends with the same numbers.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ksr import __version__
from ksr.cache import Cache, check_compatible, faults

from .checkpoint import (CheckpointError, atomic_save, atomic_write, load_state_strict, read_torch_file,
                         remove_leftover_temps, save_checkpoint)
from .config import ModelConfig
from .folds import Split, fold_groups, make_split
from .metrics import scores
from .model import KSTransformer
from .recipes import Recipe, build_optimizer, build_scheduler

SELECTIONS = ("valid", "test")
METRICS = ("wa", "ua", "macro_f1", "weighted_f1")


class RunError(ValueError):
    """A run directory that cannot be used as asked (the message says why and what to do)."""


@dataclass
class RunSpec:
    """What a run trains. Saved as run.json; a resumed run must match it."""

    model: ModelConfig
    recipe: Recipe
    protocol: str = "session"
    select: str = "valid"  # "test" reproduces the public code's test-set selection
    metric: str = "wa"
    val_fraction: float = 0.1
    cache_meta: dict[str, Any] = field(default_factory=dict)
    cache_dir: str = ""  # where the training cache was (the default for ksr eval)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "recipe": self.recipe.to_dict(), "protocol": self.protocol,
                "select": self.select, "metric": self.metric, "val_fraction": self.val_fraction,
                "cache_meta": self.cache_meta, "cache_dir": self.cache_dir, "ksr_version": __version__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        return cls(model=ModelConfig.from_dict(d["model"]), recipe=Recipe(**d["recipe"]), protocol=d["protocol"],
                   select=d["select"], metric=d["metric"], val_fraction=d["val_fraction"],
                   cache_meta=d["cache_meta"], cache_dir=d.get("cache_dir", ""))


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temporary file, flush, rename)."""
    atomic_write(path, "w", lambda f: f.write(json.dumps(obj, indent=1) + "\n"))


# Model fields the cache decides: the features' dims and the classes.
CACHE_FIELDS = ("audio_dim", "text_dim", "num_classes")


def model_config_for_cache(cache: Cache, base: ModelConfig, **changes: Any) -> ModelConfig:
    """``base`` with ``changes`` and the cache's dims and classes, checked once as a whole (so
    e.g. 12 heads fit a 768-dim cache though not the default 512 dims)."""
    meta = cache.meta
    wanted = dict(zip(CACHE_FIELDS, (meta.audio_dim, meta.text_dim, len(meta.classes))))
    return base.replace(**changes, **wanted)


def check_run_matches_cache(spec: RunSpec, cache: Cache, run_dir: Path) -> None:
    """A run's model only fits caches made with the same encoders, dims and classes."""
    expected = {k: v for k, v in spec.cache_meta.items() if k in ("audio_encoder", "text_encoder", "classes",
                                                                  "max_audio_len", "max_text_len")}
    check_compatible(cache.meta, expected, where=f"cache {cache.root} for run {run_dir}")


def fold_dir(run_dir: Path, seed: int, fold: int) -> Path:
    return run_dir / f"seed{seed}" / f"fold{fold}"


def cache_split(cache: Cache, spec: RunSpec, fold: int, seed: int) -> Split:
    return make_split(spec.protocol, fold, cache.sessions, cache.speakers, cache.labels,
                      val_fraction=spec.val_fraction, seed=seed)


def num_folds(cache: Cache, protocol: str) -> int:
    return len(fold_groups(protocol, cache.sessions, cache.speakers))


@torch.no_grad()
def predict(model: KSTransformer, cache: Cache, indices: np.ndarray, batch_size: int, device: torch.device,
            amp: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Predicted classes, class probabilities and mean cross-entropy over ``indices``."""
    model.eval()
    preds, probs, loss_sum = [], [], 0.0
    for batch in cache.loader(indices, batch_size=batch_size):
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask).float()
        loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum").item()
        p = logits.softmax(-1)
        probs.append(p.cpu().numpy())
        preds.append(p.argmax(-1).cpu().numpy())
    n = max(len(indices), 1)
    if not preds:
        return np.zeros(0, np.int64), np.zeros((0, model.cfg.num_classes)), 0.0
    return np.concatenate(preds), np.concatenate(probs), loss_sum / n


def autocast(device: torch.device, amp: bool):
    """bfloat16 autocast on GPU when asked; a no-op context otherwise."""
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU of this rank (LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Ranks:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_ranks(device: torch.device) -> Ranks:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def epoch_batches(indices: np.ndarray, batch_size: int, generator: torch.Generator, ranks: Ranks) -> list[np.ndarray]:
    """One epoch of shuffled global batches; each rank takes every world-th utterance of each.

    Every rank draws the same permutation from the same generator, so the global batches (and
    the shuffle state saved for resuming) are those of a single-process run.
    """
    order = indices[torch.randperm(len(indices), generator=generator).numpy()]
    return [order[i:i + batch_size][ranks.rank::ranks.world] for i in range(0, len(order), batch_size)]


@dataclass
class FoldOutcome:
    fold: int
    seed: int
    best_epoch: int
    best_value: float
    epochs_run: int
    seconds: float


def train_fold(cache: Cache, spec: RunSpec, run_dir: Path, fold: int, seed: int, device: torch.device,
               resume: bool = False, amp: bool = False, progress: bool = True,
               on_epoch: Callable[[int, dict], None] | None = None, ranks: Ranks = Ranks()) -> FoldOutcome:
    """Train (or resume) one fold; writes its folder under ``run_dir`` (rank 0 writes)."""
    out = fold_dir(run_dir, seed, fold)
    split = cache_split(cache, spec, fold, seed)
    selection = split.test if spec.select == "test" else split.valid
    if len(selection) == 0:
        raise RunError(f"fold {fold}: the {spec.select} set is empty; raise --val-fraction or use --select test")
    if ranks.main:
        remove_leftover_temps(out)  # writes a killed run never finished
        write_json(out / "split.json", {
        "describe": split.describe(), "protocol": split.protocol, "fold": fold, "test_group": split.test_group,
        "select": spec.select,
            "train": [cache.ids[i] for i in split.train], "valid": [cache.ids[i] for i in split.valid],
            "test": [cache.ids[i] for i in split.test]})

    r = spec.recipe
    torch.manual_seed(seed)
    model = KSTransformer(spec.model).to(device)
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
        trainer = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    began = time.perf_counter()
    epochs = tqdm(range(start_epoch, r.epochs), initial=start_epoch, total=r.epochs, desc=f"fold {fold}",
                  unit="epoch", disable=not (progress and ranks.main), leave=False)
    for epoch in epochs:
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, seen = 0.0, 0
        for part in epoch_batches(split.train, r.batch_size, shuffle, ranks):
            faults.point("train-batch")  # test-only: the reliability tests kill the run here
            batch = cache.batch(part).to(device)
            with autocast(device, amp):
                logits = trainer(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask)
            loss = F.cross_entropy(logits.float(), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP, gradients are averaged over the ranks here
            optimizer.step()
            loss_sum += loss.item() * len(batch)
            seen += len(batch)
        scheduler.step()
        if ranks.world > 1:  # the epoch's loss over all ranks' shares
            totals = torch.tensor([loss_sum, float(seen)], dtype=torch.float64)
            torch.distributed.all_reduce(totals)
            loss_sum, seen = totals[0].item(), int(totals[1].item())
        preds, _, sel_loss = predict(model, cache, selection, r.batch_size, device, amp)
        sel = scores(cache.labels[selection], preds, spec.model.num_classes)
        record = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / max(seen, 1), f"{spec.select}_loss": sel_loss,
                  **{f"{spec.select}_{m}": sel[m] for m in METRICS}}
        history.append(record)
        meta = {"fold": fold, "seed": seed, "epoch": epoch, "select": spec.select, "metric": spec.metric,
                "test_group": split.test_group, "protocol": spec.protocol,
                # Encoders, classes, max lengths: what `ksr predict` needs to rebuild the features.
                "cache_meta": spec.cache_meta}
        improved = sel[spec.metric] > best["value"]
        if improved:
            best = {"epoch": epoch, "value": sel[spec.metric]}
        if ranks.main:
            if improved:
                save_checkpoint(out / "best.pt", model, {**meta, "value": sel[spec.metric]})
            save_checkpoint(out / "last.pt", model, meta)
            write_json(out / "history.json", {"best": best, "epochs": history})
            # Written last: a crash before this line redoes the epoch, after it resumes past it.
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                         "shuffle_rng": shuffle.get_state(), "history": history, "best": best, "epoch": epoch},
                        state_path)
        ranks.barrier()
        epochs.set_postfix(loss=f"{record['train_loss']:.3f}", **{spec.metric: f"{sel[spec.metric]:.3f}"})
        if on_epoch is not None:
            on_epoch(epoch, record)
    return FoldOutcome(fold, seed, best["epoch"], best["value"], len(history), time.perf_counter() - began)


STATE_KEYS = ("model", "optimizer", "scheduler", "torch_rng", "shuffle_rng", "history", "best", "epoch")


def read_training_state(path: Path) -> dict[str, Any]:
    """A fold's ``state.pt``, checked (CRC, weights_only, every key present) before any of it is used."""
    state = read_torch_file(path)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ksr training state (missing {', '.join(missing)})")
    return state


def prepare_run(run_dir: Path, spec: RunSpec, resume: bool) -> RunSpec:
    """Create the run directory, or check that a resumed one asks for the same run."""
    path = run_dir / "run.json"
    remove_leftover_temps(run_dir)
    if path.exists():
        saved = json.loads(path.read_text())
        new = spec.to_dict()
        differs = [k for k in ("model", "recipe", "protocol", "select", "metric", "val_fraction") if saved.get(k) != new[k]]
        if differs:
            raise RunError(f"{run_dir} holds a run with other settings ({', '.join(differs)} differ); "
                           "choose a new --run directory")
        if not resume and any(run_dir.glob("seed*/fold*/state.pt")):
            raise RunError(f"{run_dir} already holds trained folds; pass --resume to continue or choose a new --run")
        return RunSpec.from_dict(saved)
    write_json(path, spec.to_dict())
    return spec


def load_run(run_dir: Path) -> RunSpec:
    path = run_dir / "run.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no run.json here; train first (ksr train) or pass --run")
    try:
        return RunSpec.from_dict(json.loads(path.read_text()))
    except (KeyError, ValueError, TypeError) as e:
        raise RunError(f"{path}: not a ksr run description ({e})") from None


def load_fold_model(run_dir: Path, seed: int, fold: int, which: str = "best") -> tuple[KSTransformer, dict]:
    from .checkpoint import load_checkpoint

    path = fold_dir(run_dir, seed, fold) / f"{which}.pt"
    if not path.is_file():
        raise RunError(f"{path}: missing; fold {fold} (seed {seed}) has not finished an epoch")
    ckpt = load_checkpoint(path)
    model = KSTransformer(ModelConfig.from_dict(ckpt["config"]))
    try:
        load_state_strict(model, ckpt["model"], str(path))
    except CheckpointError as e:
        raise RunError(str(e)) from None
    return model.eval(), ckpt["meta"]
