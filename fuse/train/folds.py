"""Cross-validation splits: which utterances train, validate and test in each fold.

Protocols
- ``session``: leave-one-session-out. Fold k tests the k-th session in sorted order (on IEMOCAP,
  fold k tests Session k, as s3prl and EmoBox number them; the public KS-Transformer code calls
  that fold 6-k, see ``public_fold_name``).
- ``speaker``: leave-one-speaker-out. Fold k tests the k-th speaker in sorted order; the other
  speaker(s) of the test speaker's session validate; the remaining sessions train.
- ``split``: the corpus's official split (the cache's ``split`` of each utterance, from the
  manifest): one "fold" that trains on ``train``, validates on ``valid`` and tests on each
  ``test*`` split separately (MSP-Podcast's test1 and test2, MELD's test).

Validation for ``session`` folds is drawn from the training sessions only: by default
(``validation="utterances"``) a seeded, label-stratified ``val_fraction`` of the training
utterances (at least one per class present). Such a set shares its speakers with training, so it
cannot see a speaker shift: a model can read 100% there and 0% on a new voice. With
``validation="speaker"`` one training speaker (seeded) is held out whole and validates instead,
as a new voice would. Test utterances never appear in training or validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ...cache.schema import SPLIT_TRAIN, SPLIT_VALID, is_test_split

PROTOCOLS = ("session", "speaker", "split")
#: Where a session fold's validation set comes from (see the module's docstring).
VALIDATIONS = ("utterances", "speaker")
#: What reports call the split protocol's single "fold".
OFFICIAL_SPLIT = "official split"


@dataclass(frozen=True)
class Split:
    protocol: str
    fold: int  # 1-based
    test_group: str  # "Session 5" or "speaker Ses03F"
    train: np.ndarray  # indices into the cache's utterance order
    valid: np.ndarray
    test: np.ndarray
    #: The split protocol's test splits by name ({"test1": indices, ...}; ``test`` is their union).
    tests: dict[str, np.ndarray] = field(default_factory=dict)

    def describe(self) -> str:
        if self.tests:
            parts = ", ".join(f"{name} {len(idx)}" for name, idx in self.tests.items())
            return f"{OFFICIAL_SPLIT}: {len(self.train)} train / {len(self.valid)} valid / test: {parts}"
        return (
            f"fold {self.fold} ({self.protocol} protocol): test = {self.test_group}; "
            f"{len(self.train)} train / {len(self.valid)} valid / {len(self.test)} test"
        )


def _natural(value: str) -> tuple:
    """Sort key: numbers by value ("2" before "10"), other names alphabetically. A number is
    ASCII digits only: "1_0" or "+1" (which ``int`` reads as 10 and 1) and Arabic-Indic or
    other Unicode digits (``isdigit`` is true for "١" and "²") are names, so no two distinct
    values ever share a key and the fold order is always the same."""
    if value.isascii() and value.isdigit():
        return (0, int(value), value)  # "1" and "01": equal numbers, ordered by their text
    return (1, 0, value)


def fold_groups(protocol: str, sessions: Sequence, speakers: Sequence) -> list[str]:
    """The held-out group of each fold, in fold order (fold k = element k-1)."""
    if protocol == "split":
        return [OFFICIAL_SPLIT]
    if protocol in ("session", "speaker") and any(str(s) == "" for s in sessions):
        raise ValueError(
            f"this cache has utterances without a session (an official-split corpus?): the {protocol} "
            f"protocol needs a session for every utterance; use --protocol split"
        )
    if protocol == "session":
        return sorted({str(s) for s in sessions}, key=_natural)
    if protocol == "speaker":
        return sorted({str(s) for s in speakers}, key=_natural)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def public_fold_name(session: int, num_sessions: int = 5) -> int:
    """The public KS-Transformer code's fold number for a test session: fold f tests Session 6-f."""
    return num_sessions + 1 - session


def stratified_holdout(
    indices: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A seeded ``fraction`` of ``indices`` per label (at least one of each label present)."""
    picked = []
    for label in np.unique(labels[indices]):
        members = indices[labels[indices] == label]
        count = max(1, int(round(fraction * len(members))))
        if count >= len(members):
            continue  # a class too small to spare a validation example stays in training
        picked.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def make_split(
    protocol: str,
    fold: int,
    sessions: Sequence,
    speakers: Sequence,
    labels: Sequence,
    val_fraction: float = 0.1,
    seed: int = 0,
    splits: Sequence | None = None,
    validation: str = "utterances",
) -> Split:
    if validation not in VALIDATIONS:
        raise ValueError(f"unknown validation {validation!r}; choose one of {', '.join(VALIDATIONS)}")
    if protocol == "split":
        if fold != 1:
            raise ValueError(f"fold {fold} does not exist: the split protocol has one fold (the {OFFICIAL_SPLIT})")
        return official_split(splits if splits is not None else [""] * len(labels))
    sessions = np.asarray([str(s) for s in sessions])
    speakers = np.asarray([str(s) for s in speakers])
    labels = np.asarray(labels)
    groups = fold_groups(protocol, sessions, speakers)
    if not 1 <= fold <= len(groups):
        raise ValueError(
            f"fold {fold} does not exist: the {protocol} protocol has folds 1..{len(groups)} on this cache"
        )
    held = groups[fold - 1]
    everything = np.arange(len(sessions))
    if protocol == "session":
        test = everything[sessions == held]
        rest = everything[sessions != held]
        rng = np.random.default_rng([seed, fold])
        if validation == "speaker":
            valid = held_out_speaker(rest, speakers, rng)
        else:
            valid = stratified_holdout(rest, labels, val_fraction, rng)
        train = np.setdiff1d(rest, valid)
        name = f"Session {held}"
    else:
        test = everything[speakers == held]
        session = sessions[test[0]]
        valid = everything[(sessions == session) & (speakers != held)]
        train = everything[sessions != session]
        name = f"speaker {held}"
    return Split(protocol, fold, name, train, valid, test)


def held_out_speaker(indices: np.ndarray, speakers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The utterances of one training speaker (seeded choice), to validate as a new voice would."""
    names = sorted({str(s) for s in speakers[indices]}, key=_natural)
    if len(names) < 2:
        raise ValueError(
            f"--validation speaker needs two or more training speakers in every fold; this fold's training "
            f"sessions have {len(names)}: use --validation utterances"
        )
    chosen = names[int(rng.integers(len(names)))]
    return indices[speakers[indices] == chosen]


def names_of_test_splits(splits: Sequence) -> list[str]:
    """The test splits present (``test``, ``test1``, ...), in natural order."""
    return sorted({str(s) for s in splits if is_test_split(str(s))}, key=lambda name: _natural(name[4:]))


def official_split(splits: Sequence) -> Split:
    """The split protocol's one fold: the utterances of ``train``, ``valid`` and each ``test*``.

    Refuses (one line) a cache without splits, one where some utterances have none (made from
    two manifests?), and one without train, valid or test utterances."""
    splits = np.asarray([str(s) for s in splits])
    missing = splits == ""
    if missing.all():
        raise ValueError(
            "this cache has no official splits (its manifest had no split column): --protocol split "
            "needs a cache extracted from a manifest with train / valid / test splits; use --protocol session"
        )
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} of {len(splits)} utterances of this cache have no split (extracted from a "
            f"manifest without a split column?): the split protocol needs every utterance's split"
        )
    everything = np.arange(len(splits))
    names = names_of_test_splits(splits)
    for need, have in ((SPLIT_TRAIN, (splits == SPLIT_TRAIN).any()), (SPLIT_VALID, (splits == SPLIT_VALID).any())):
        if not have:
            raise ValueError(
                f"this cache has no {need!r} utterances: the split protocol trains on train, scores every epoch on "
                f"valid (and selects on it unless --select last) and tests on each test split"
                + ("; mark part of train as valid in the manifest's split column" if need == SPLIT_VALID else "")
            )
    if not names:
        raise ValueError(
            "this cache has no test utterances (no split test, test1, ...): the split protocol tests on each test split"
        )
    tests = {name: everything[splits == name] for name in names}
    return Split(
        "split",
        1,
        OFFICIAL_SPLIT,
        everything[splits == SPLIT_TRAIN],
        everything[splits == SPLIT_VALID],
        np.sort(np.concatenate(list(tests.values()))),
        tests,
    )
