"""TensorBoard curves of a training run (``ksr train --tensorboard [DIR]``).

One TensorBoard run per seed and fold, in ``DIR/seedS/foldK`` (the run directory's own naming),
so TensorBoard lists them side by side. Per epoch, with the epoch number of the fold's
``history.json`` as the step (counted from 0), the same values history.json records:

- ``train/loss`` (mean over the epoch's batches) and ``train/lr`` (the epoch's rate, before any
  warm-up factor);
- ``valid/loss`` and ``valid/wa``, ``valid/ua``, ``valid/macro_f1``, ``valid/weighted_f1`` on the
  validation set that selects the epoch;
- ``test/...``, the same on the fold's test set. These are for looking only: an epoch chosen by
  watching them is chosen on the test set (under ``--select test`` they are the selection set).

The writer is tensorboardX (it needs only protobuf; ``pip install 'ksr[tensorboard]'``); its
event files are TensorBoard's own format. Viewing them needs the ``tensorboard`` package:
``tensorboard --logdir DIR``.

DIR is a folder: made if missing, refused (one line, before the cache is read) when it, or the
nearest part of its path that exists, is a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...common.errors import KsrError
from ...common.optional import require
from ..train.runs import fold_files

#: history.json key prefix -> TensorBoard tag section
SECTIONS = ("train", "valid", "test")


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """An epoch's history record as {tag: value}: ``valid_ua`` -> ``valid/ua``, ``lr`` -> ``train/lr``."""
    tags = {}
    for key, value in record.items():
        if key == "lr":
            tags["train/lr"] = float(value)
            continue
        section, _, name = key.partition("_")
        if section in SECTIONS and name:
            tags[f"{section}/{name}"] = float(value)
    return tags


class TensorBoard:
    """Where a run's curves go; made when the command starts, so a missing writer stops it first."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        existing = next((p for p in (self.root, *self.root.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            where = "" if existing == self.root else f" ({existing} is)"
            raise KsrError(f"--tensorboard {self.root}: not a directory{where}; give a folder for the curves")
        self._writer = require("tensorboardX", "--tensorboard", "tensorboard").SummaryWriter

    def open(self, seed: int, fold: int, first_epoch: int = 0, protocol: str = "session") -> FoldBoard:
        """The writer of one fold, from ``first_epoch`` on (> 0 when resumed). TensorBoard drops
        what an interrupted run wrote for that epoch or later, so no epoch shows twice; each start
        writes its own file (the writer names files by the second, so a suffix tells them apart)."""
        return FoldBoard(
            self._writer(
                logdir=str(fold_files(self.root, seed, fold, protocol).root),  # the split protocol's: seedS/split
                purge_step=first_epoch,
                filename_suffix=f".epoch{first_epoch:05d}",
            )
        )


class FoldBoard:
    def __init__(self, writer) -> None:
        self.writer = writer

    def epoch(self, epoch: int, record: dict[str, Any], test: dict[str, Any] | None = None) -> None:
        """Write one epoch's record (and the test set's scores, keys ``test_*``), then flush:
        the curves are on disk as each epoch ends."""
        for tag, value in scalar_tags({**record, **(test or {})}).items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
