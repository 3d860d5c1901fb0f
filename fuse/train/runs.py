"""Run directories: what a run trains, where its files live, and whether a cache fits it.

This module is the only one that names a run directory's files or parses its paths::

    RUN/run.json                     the RunSpec: model config, recipe, protocol, selection, cache metadata
    RUN/seed123/fold5/split.json     which utterance ids train, validate, test
    RUN/seed123/fold5/state.pt       model, optimiser, scheduler, RNG states after the last epoch
    RUN/seed123/fold5/best.pt        the selected epoch's model (a ksr checkpoint)
    RUN/seed123/fold5/last.pt        the last epoch's model
    RUN/seed123/fold5/history.json   per-epoch loss, lr and selection metrics
    RUN/seed123/split/...            the same files for the split protocol's one fold (the official split)
    RUN/.lock-train-seed123-fold5    held (flock, with its pid) while a process trains that fold
    RUN/report.json, .md, .csv       the run's report (``ReportFiles``; ``ksr eval --fold`` adds _foldK stems)
    RUN/report_predictions.csv       every test utterance's prediction, per seed and fold
    RUN/report_*.png                 the report's figures
    RUN/baseline-probe/              the linear-probe baseline: a run of its own, same layout
    RUN/baseline-probe-weighted/     the class-weighted probe (runs trained for imbalanced classes)
    RUN/tensorboard/seedS/foldK      TensorBoard curves (``ksr train --tensorboard``)
    runs/latest                      a link to the last run ``ksr train`` worked on, finished or not (``ksr eval``'s default)

It also decides, in one place, what ``--resume`` continues (:func:`resumed_options`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import __version__
from ...cache import Cache, CacheError, CacheMeta, check_compatible
from ...cache.locks import live_writers, lock_writer, unlock_writer
from ...common import KsrError, remove_dead_temps, write_json
from ..model.config import ModelConfig, cache_dims, cli_settings
from .folds import OFFICIAL_SPLIT, Split, fold_groups, make_split
from .recipes import Recipe

RUN_FILE = "run.json"
REPORT_STEM = "report"
#: Which epoch of each fold a run keeps: the best on a validation set drawn from the training
#: sessions, the best on the test set (the public code's protocol; reports are marked), or the
#: last one (no selection: with a small validation set it picks worse epochs than the last;
#: docs/learning.md).
SELECTIONS = ("valid", "test", "last")
LATEST = Path("runs") / "latest"
_FOLD_DIR = re.compile(r"seed(\d+)/(?:fold(\d+)|split)")
#: The folder of the split protocol's single fold (fold 1).
SPLIT_DIR = "split"
# Settings that make two runs different runs (a resume must agree on every one).
RUN_SETTINGS = ("model", "recipe", "protocol", "select", "metric", "val_fraction", "validation")
# Cache metadata a trained model depends on: another cache must agree on these to be used with it.
MODEL_CACHE_KEYS = ("audio_encoder", "text_encoder", "classes", "max_audio_len", "max_text_len")


class RunError(KsrError, ValueError):
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
    validation: str = "utterances"  # session folds: "speaker" validates on a held-out training speaker

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "recipe": self.recipe.to_dict(),
            "protocol": self.protocol,
            "select": self.select,
            "metric": self.metric,
            "val_fraction": self.val_fraction,
            "cache_meta": self.cache_meta,
            "cache_dir": self.cache_dir,
            "validation": self.validation,
            "ksr_version": __version__,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            recipe=Recipe.from_dict(d["recipe"]),
            protocol=d["protocol"],
            select=d["select"],
            metric=d["metric"],
            val_fraction=d["val_fraction"],
            cache_meta=d["cache_meta"],
            cache_dir=d.get("cache_dir", ""),
            validation=d.get("validation", "utterances"),  # runs of ksr before the option
        )


def measured_on(spec: RunSpec) -> str:
    """The set each epoch is scored on: the test set under --select test, else validation."""
    return "test" if spec.select == "test" else "valid"


@dataclass
class FoldOutcome:
    """What training one fold and seed ended with."""

    fold: int
    seed: int
    best_epoch: int
    best_value: float
    epochs_run: int
    seconds: float


def checkpoint_meta(spec: RunSpec, split: Split, fold: int, seed: int, epoch: int) -> dict[str, Any]:
    """What every checkpoint of a fold records besides its weights: where it comes from, how its
    epoch was chosen, and the training cache's metadata (encoders, classes, max lengths: what
    ``ksr predict`` needs to rebuild the features)."""
    return {
        "fold": fold,
        "seed": seed,
        "epoch": epoch,
        "select": spec.select,
        "metric": spec.metric,
        "test_group": split.test_group,
        "protocol": spec.protocol,
        "cache_meta": spec.cache_meta,
    }


# --- paths -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldFiles:
    """The files of one fold folder (``RUN/seedS/foldK``, or ``RUN/seedS/split``)."""

    root: Path

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def state(self) -> Path:
        return self.root / "state.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    def checkpoint(self, which: str) -> Path:
        """``best.pt`` (the selected epoch) or ``last.pt``."""
        if which not in ("best", "last"):
            raise ValueError(f"a fold keeps the best or the last checkpoint, not {which!r}")
        return self.best if which == "best" else self.last

    def done(self) -> bool:
        """Whether the fold has finished an epoch (its selected checkpoint exists)."""
        return self.best.is_file()


def fold_files(run_dir: Path, seed: int, fold: int, protocol: str = "session") -> FoldFiles:
    """``RUN/seedS/foldK``; the split protocol's one fold is ``RUN/seedS/split``."""
    return FoldFiles(Path(run_dir) / f"seed{seed}" / (SPLIT_DIR if protocol == "split" else f"fold{fold}"))


def run_file(run_dir: Path) -> Path:
    """``RUN/run.json``: the RunSpec."""
    return Path(run_dir) / RUN_FILE


def baseline_dir(run_dir: Path) -> Path:
    """Where ``ksr train`` fits the linear-probe baseline of a run (same folds, seeds, selection)."""
    return Path(run_dir) / "baseline-probe"


def weighted_baseline_dir(run_dir: Path) -> Path:
    """Where ``ksr train`` fits the class-weighted linear probe of a run trained for imbalanced
    classes (a loss other than plain cross-entropy, or the balanced sampler)."""
    return Path(run_dir) / "baseline-probe-weighted"


def tensorboard_dir(run_dir: Path) -> Path:
    """``ksr train --tensorboard``'s default folder."""
    return Path(run_dir) / "tensorboard"


@dataclass(frozen=True)
class ReportFiles:
    """A report's files in ``folder``: ``STEM.json``, ``.md``, ``.csv``, ``STEM_predictions.csv``
    and ``STEM_*.png`` figures (stem ``report``; ``report_fold5`` for ``ksr eval --fold 5``)."""

    folder: Path
    stem: str = REPORT_STEM

    @property
    def json(self) -> Path:
        return Path(self.folder) / f"{self.stem}.json"

    @property
    def markdown(self) -> Path:
        return Path(self.folder) / f"{self.stem}.md"

    @property
    def csv(self) -> Path:
        return Path(self.folder) / f"{self.stem}.csv"

    @property
    def predictions(self) -> Path:
        return Path(self.folder) / f"{self.stem}_predictions.csv"

    @property
    def attribute_predictions(self) -> Path:
        """Each test utterance's true and predicted attribute values (a model that learns them)."""
        return Path(self.folder) / f"{self.stem}_attribute_predictions.csv"

    def figure(self, name: str) -> Path:
        return Path(self.folder) / f"{self.stem}_{name}.png"


def report_stem(folds: list[int] | None) -> str:
    """``report``, or ``report_fold4_5`` for a report of some folds only."""
    return REPORT_STEM if not folds else REPORT_STEM + "_fold" + "_".join(str(f) for f in folds)


def cross_corpus_stem(corpus: str, folds: list[int] | None) -> str:
    """``report_on_msp-podcast`` (``_fold4_5`` added for some folds): the report of a run tested
    on another corpus, beside the run's own report."""
    safe = re.sub(r"[^\w.-]+", "_", corpus).strip("._") or "corpus"
    return report_stem(folds) + f"_on_{safe}"


def fold_checkpoint(run_dir: Path, seed: int, fold: int, which: str = "best", protocol: str = "session") -> Path:
    """``best.pt`` or ``last.pt`` of a fold, which must exist."""
    path = fold_files(run_dir, seed, fold, protocol).checkpoint(which)
    if not path.is_file():
        raise RunError(f"{path}: missing; fold {fold} (seed {seed}) has not finished an epoch")
    return path


def fold_folders(run_dir: Path) -> list[tuple[int, int, FoldFiles]]:
    """(seed, fold, files) of every fold folder in the run directory, under any protocol
    (``seedS/split`` is fold 1), sorted by seed and fold."""
    found = []
    for folder in Path(run_dir).glob("seed*/*"):
        parsed = _FOLD_DIR.fullmatch(folder.relative_to(run_dir).as_posix())
        if parsed and folder.is_dir():
            found.append((int(parsed[1]), int(parsed[2] or 1), FoldFiles(folder)))
    return sorted(found, key=lambda t: t[:2])


def trained_folds(run_dir: Path) -> dict[int, list[int]]:
    """{seed: [folds with a best.pt]} found in the run directory (``seedS/split`` is fold 1)."""
    found: dict[int, list[int]] = {}
    for seed, fold, files in fold_folders(run_dir):
        if files.done():
            found.setdefault(seed, []).append(fold)
    return found


def selected_checkpoints(run_dir: Path) -> list[tuple[int, int, Path]]:
    """(seed, fold, best.pt) of every fold folder of the run that holds its selected checkpoint,
    sorted by seed and fold: the members of the run's ensemble (``ksr predict --run``)."""
    found = [(seed, fold, files.best) for seed, fold, files in fold_folders(run_dir) if files.done()]
    if not found:
        raise RunError(f"{run_dir}: no trained fold (no fold folder with a best.pt); run ksr train first")
    return found


def newest_checkpoint_time(run_dir: Path) -> float:
    """The modification time of the run's newest selected checkpoint (0 when there is none)."""
    return max((f.best.stat().st_mtime for _, _, f in fold_folders(run_dir) if f.done()), default=0.0)


def run_of_checkpoint(path: str | os.PathLike) -> Path | None:
    """RUN for a checkpoint at ``RUN/seedS/foldK/name.pt`` whose RUN holds a run.json, else None."""
    fold = Path(path).resolve().parent
    if _FOLD_DIR.fullmatch(f"{fold.parent.name}/{fold.name}") and run_file(fold.parent.parent).is_file():
        return fold.parent.parent
    return None


def recorded_cache_meta(path: str | os.PathLike, meta: dict[str, Any]) -> CacheMeta:
    """The training cache's metadata a checkpoint records in its ``meta``, else (checkpoints
    written before they recorded it) its run's ``RUN/run.json`` two folders above its fold folder."""
    recorded, source = meta.get("cache_meta"), str(path)
    if not recorded:
        run = run_of_checkpoint(path)
        if run is None:
            raise RunError(
                f"{path}: the checkpoint records no cache metadata (encoders, classes, max lengths) and there "
                f"is no {RUN_FILE} two folders above its fold folder; use a checkpoint written by `ksr train`"
            )
        source = str(run_file(run))
        try:
            recorded = json.loads(run_file(run).read_text()).get("cache_meta")
        except (OSError, ValueError, AttributeError) as e:
            raise RunError(f"{source}: not a readable run description ({e})") from None
        if not recorded:
            raise RunError(f"{source}: holds no cache_meta; use a checkpoint written by `ksr train`")
    try:
        return CacheMeta.from_dict(recorded)
    except (TypeError, ValueError, KeyError) as e:
        raise RunError(f"{source}: bad cache metadata ({e})") from None


def point_latest(run_dir: Path, latest: Path = LATEST) -> None:
    """Make ``runs/latest`` point at ``run_dir`` (a convenience: failures are ignored)."""
    try:
        latest.parent.mkdir(exist_ok=True)
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        os.symlink(os.path.relpath(Path(run_dir).resolve(), latest.parent.resolve()), latest)
    except OSError:
        pass


# --- run.json ----------------------------------------------------------------------------------


def prepare_run(
    run_dir: Path, spec: RunSpec, resume: bool, seeds: list[int] | None = None, folds: list[int] | None = None
) -> None:
    """Create the run directory, or check that a resumed one asks for the same run (the options a
    resume takes from run.json are :func:`resumed_options`'). A new run's ``seeds`` and ``folds``
    (None: all) are recorded in run.json for ``--resume``."""
    path = run_file(run_dir)
    remove_dead_temps(run_dir)
    if path.exists():
        saved = load_run(run_dir).to_dict()
        new = spec.to_dict()
        differs = [k for k in RUN_SETTINGS if saved.get(k) != new[k]]
        if differs:
            raise RunError(
                f"{run_dir} holds a run with other settings ({', '.join(differs)} differ); choose a new --run directory"
            )
        if not resume and any(f.state.exists() for _, _, f in fold_folders(run_dir)):
            raise RunError(f"{run_dir} already holds trained folds; pass --resume to continue or choose a new --run")
        return
    write_json(path, {**spec.to_dict(), "seeds": seeds, "folds": folds})


#: The options of a training command that a run records, by where run.json keeps them.
RUN_OPTIONS = ("protocol", "select", "metric", "val_fraction", "validation")
RECIPE_OPTIONS = ("epochs", "lr", "batch_size", "momentum", "schedule", "optimizer", "warmup_epochs")
RECIPE_OPTIONS += ("loss", "focal_gamma", "sampler")  # the class loss and the batches' order


def resumed_options(run_dir: Path, options: dict[str, Any], typed: set[str]) -> dict[str, Any]:
    """What ``--resume`` continues: the training command's ``options`` (``recipe_name``, the
    recipe's and the model's settings, ``RUN_OPTIONS``, ``seeds``, ``folds``) with every option
    that was not ``typed`` again taken from the run's run.json, the seeds and folds of the command
    that started the run among them. A run without run.json is a new run: ``options`` as given.
    Typed options that differ from the run's are refused later, by :func:`prepare_run`."""
    if not run_file(run_dir).is_file():
        return options
    saved = load_run(run_dir)
    recorded: dict[str, Any] = {
        "recipe_name": saved.recipe.name,
        **{k: getattr(saved.recipe, k) for k in RECIPE_OPTIONS},
        **{f.name: getattr(saved.model, f.name) for f in cli_settings()},
        **{k: getattr(saved, k) for k in RUN_OPTIONS},
    }
    raw = json.loads(run_file(run_dir).read_text())
    recorded["seeds"], recorded["folds"] = raw.get("seeds"), raw.get("folds")
    recorded["cache_dir"] = saved.cache_dir or None  # --resume needs no --cache
    merged = dict(options)
    for name, value in recorded.items():
        if name not in typed and value is not None:
            merged[name] = value
    return merged


def load_run(run_dir: Path) -> RunSpec:
    path = run_file(run_dir)
    if not path.is_file():
        raise RunError(f"{run_dir}: no run.json here; train first (ksr train) or pass --run")
    try:
        return RunSpec.from_dict(json.loads(path.read_text()))
    except (KeyError, ValueError, TypeError) as e:
        raise RunError(f"{path}: not a ksr run description ({e})") from None


def history_of(run_dir: Path, seed: int, fold: int, protocol: str = "session") -> list[dict]:
    path = fold_files(run_dir, seed, fold, protocol).history
    return json.loads(path.read_text())["epochs"] if path.is_file() else []


def check_recorded_split(out: Path, split: Split, ids: list[str]) -> None:
    """Refuse a cache whose fold differs from the one the run recorded in ``split.json`` (another
    cache would make "fold k" other utterances: a model could be scored on what it trained on)."""
    path = FoldFiles(Path(out)).split
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        raise RunError(f"{path}: not readable JSON; remove the fold folder to train it again") from None
    parts = [(part, getattr(split, part), recorded.get(part, [])) for part in ("train", "valid", "test")]
    if split.tests or "tests" in recorded:  # the split protocol: each test split on its own
        names = sorted(set(split.tests) | set(recorded.get("tests", {})))
        parts += [(name, split.tests.get(name, []), recorded.get("tests", {}).get(name, [])) for name in names]
    which = OFFICIAL_SPLIT if split.protocol == "split" else f"fold {split.fold}"
    for part, indices, before in parts:
        now = [ids[i] for i in indices]
        if sorted(now) != sorted(before):
            gone = len(set(before) - set(now))
            raise RunError(
                f"{which}: this cache's {part} utterances are not the ones the run recorded in {path} "
                f"({len(now)} now, {len(before)} recorded, {gone} recorded ones missing); use the "
                f"cache the run was trained on"
            )


def write_split(out: Path, split: Split, select: str, ids: list[str]) -> None:
    write_json(
        FoldFiles(Path(out)).split,
        {
            "describe": split.describe(),
            "protocol": split.protocol,
            "fold": split.fold,
            "test_group": split.test_group,
            "select": select,
            "train": [ids[i] for i in split.train],
            "valid": [ids[i] for i in split.valid],
            "test": [ids[i] for i in split.test],
            **({"tests": {name: [ids[i] for i in idx] for name, idx in split.tests.items()}} if split.tests else {}),
        },
    )


# --- the run and its cache ---------------------------------------------------------------------


def model_config_for_cache(cache: Cache, base: ModelConfig, **changes: Any) -> ModelConfig:
    """``base`` with ``changes`` and the cache's dims and classes, checked once as a whole (so
    e.g. 12 heads fit a 768-dim cache though not the default 512 dims). A model that learns
    attributes predicts the cache's, in its order."""
    merged = {**changes, **cache_dims(cache.meta)}
    if merged.get("task", base.task) != "classes":
        merged["attributes"] = tuple(cache.meta.attributes)
    return base.replace(**merged)


def check_run_matches_cache(spec: RunSpec, cache: Cache, run_dir: Path) -> None:
    """A run's model only fits caches made with the same encoders, dims and classes."""
    expected = {k: v for k, v in spec.cache_meta.items() if k in MODEL_CACHE_KEYS}
    check_compatible(cache.meta, expected, where=f"cache {cache.root} for run {run_dir}")


def cache_split(cache: Cache, spec: RunSpec, fold: int, seed: int) -> Split:
    try:
        return make_split(
            spec.protocol,
            fold,
            cache.sessions,
            cache.speakers,
            cache.labels,
            val_fraction=spec.val_fraction,
            seed=seed,
            splits=cache.splits,
            validation=spec.validation,
        )
    except ValueError as e:
        raise RunError(f"cache {cache.root}: {e}") from None


def num_folds(cache: Cache, protocol: str) -> int:
    try:
        return len(fold_groups(protocol, cache.sessions, cache.speakers))
    except ValueError as e:
        raise RunError(f"cache {cache.root}: {e}") from None


def check_protocol(cache: Cache, spec: RunSpec, folds: list[int] | None) -> None:
    """Refuse, before anything is written, what the split protocol cannot do: --fold (its one
    fold is the official split), --select test (it has a validation split: choosing epochs on
    the test set would only inflate its numbers), and a cache without usable splits."""
    if spec.protocol != "split":
        num_folds(cache, spec.protocol)  # a cache without sessions is refused here
        return
    if folds:
        raise RunError(
            "--fold does not apply to --protocol split: its one model per seed trains on the cache's train "
            "split, selects on valid and tests on each test split"
        )
    if spec.select == "test":
        raise RunError(
            "--select test is refused under --protocol split: the official split has a valid split to choose "
            "epochs on (--select valid), or keep the last epoch (--select last)"
        )
    cache_split(cache, spec, 1, 0)  # no splits, some missing, no train / valid / test: one line


# --- who is training a fold now ----------------------------------------------------------------

#: The writer tag of a fold's lock: ``RUN/.lock-train-seedS-foldK`` (cache.locks' scheme). In
#: the run folder, not the fold folder: a refused start leaves the fold folder untouched.
TRAIN_LOCK_TAG = "train"


@contextmanager
def fold_lock(run_dir: Path, seed: int, fold: int, protocol: str = "session") -> Iterator[None]:
    """Held while this process trains one fold: a second ``ksr train`` on the same fold (at once,
    or a --resume while the first runs) is refused in one line, where both would write the same
    files. The kernel drops the lock when its process dies, so a killed run's file is no
    obstacle. Other folds of the run stay free: processes may train different folds of one run."""
    folder = fold_files(run_dir, seed, fold, protocol).root
    tag = f"{TRAIN_LOCK_TAG}-seed{seed}-{folder.name}"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    try:
        fd, _ = lock_writer(Path(run_dir), tag)
    except CacheError:
        pid = live_writers(run_dir).get(tag, "")
        raise RunError(
            f"{folder}: another ksr train{f' (pid {pid})' if pid else ''} is training this fold now; wait for "
            "it to finish (then --resume), or choose another --run"
        ) from None
    try:
        yield
    finally:
        unlock_writer(Path(run_dir), tag, fd, remove=True)
