"""What the preparers of corpora with official splits (MSP-Podcast, MELD) share: the manifest's
``split`` column, their report, and the table ``ksr prepare`` prints.

These corpora come with train / development / test partitions instead of sessions: their rows
carry ``split`` (``train``, ``valid``, ``test`` or ``test1``, ``test2``, ...) and an EMPTY
``session``, which the manifest reader accepts when ``split`` is present.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import Utterance

#: Speaker of turns whose corpus does not say who speaks (MSP-Podcast's ``Unknown``, an empty
#: MELD field): one fixed marker, so the rows stay usable and countable, and no made-up identity
#: is invented per turn. A speaker-based protocol would take these turns for one speaker; the
#: official-split protocol does not group by speaker at all.
UNKNOWN_SPEAKER = "unknown"
#: At most this many ids are named per kind of problem in the printed summary.
NAMED = 5


@dataclass
class SplitReport:
    """A prepared corpus with official splits: its rows and an account of everything else."""

    corpus: str  # "MSP-Podcast 4-class", "MELD 7-class"
    root: Path
    classes: tuple[str, ...]
    splits: tuple[str, ...]  # in print order
    rows: list[Utterance] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> label -> n
    no_text: Counter = field(default_factory=Counter)  # split -> rows written with an empty text
    dropped: Counter = field(default_factory=Counter)  # reason -> rows not written, in print order
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind -> ids left out
    notes: list[str] = field(default_factory=list)  # what was done with the release's quirks
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.rows)

    def add(self, row: Utterance, split: str) -> None:
        self.rows.append(row)
        self.counts.setdefault(split, Counter())[row.label] += 1
        if not row.text:
            self.no_text[split] += 1

    def problem(self, kind: str, uid: str) -> None:
        """A row left out for ``kind`` (a missing clip, a duplicate id, ...)."""
        self.problems.setdefault(kind, []).append(uid)


def _named(ids: list[str]) -> str:
    more = f", ... ({len(ids)} in all)" if len(ids) > NAMED else ""
    return ", ".join(ids[:NAMED]) + more


def format_split_report(report: SplitReport) -> str:
    """The per-split, per-class counts and the account of what was left out, as printed by
    ``ksr prepare``."""
    width = max(7, *(len(c) + 2 for c in report.classes))
    lines = [
        f"{report.corpus} manifest from {report.root}",
        f"{'split':<8}" + "".join(f"{c:>{width}}" for c in report.classes) + f"{'total':>8}{'no text':>9}",
    ]
    totals: Counter = Counter()
    for split in report.splits:
        counts = report.counts.get(split, Counter())
        totals.update(counts)
        lines.append(
            f"{split:<8}"
            + "".join(f"{counts[c]:>{width}}" for c in report.classes)
            + f"{sum(counts.values()):>8}{report.no_text[split]:>9}"
        )
    lines.append(
        f"{'all':<8}"
        + "".join(f"{totals[c]:>{width}}" for c in report.classes)
        + f"{report.total:>8}{sum(report.no_text.values()):>9}"
    )
    if report.dropped:
        lines.append("not written: " + ", ".join(f"{n} {why}" for why, n in report.dropped.items() if n))
    for kind, ids in report.problems.items():
        lines.append(f"left out, {kind}: {len(ids)} ({_named(ids)})")
    if report.no_text:
        lines.append(
            f"{sum(report.no_text.values())} rows have no transcript: written with an empty text, which "
            "ksr extract reports per utterance (an ASR transcript can fill them)"
        )
    lines.extend(report.notes)
    return "\n".join(lines)
