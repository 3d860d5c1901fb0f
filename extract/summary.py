"""What an extraction run did: the errors file (one line per utterance left out) and the summary.

Every manifest row ends in exactly one bucket, so the counts add up to the manifest:
``total = stored_before + extracted + skipped + sum(failed.values())``, where ``total`` counts
the rows the manifest reader rejected too (they fail at stage ``manifest``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Stages an utterance can be left out at, in pipeline order. ``label`` means skipped (its label
#: is not one of the classes), every other stage means failed.
STAGES = ("manifest", "label", "audio", "audio-encoder", "text-encoder", "features")
#: A class with fewer utterances than this in the cache gets a warning naming it: most likely a
#: mistyped label (``postive`` among ``positive``) that became a class of its own.
MIN_CLASS_UTTERANCES = 5
HEADER = "id\tstage\treason\n"


def one_line(text: str, limit: int = 400) -> str:
    """A reason or id as one TSV field: whitespace runs become one space, other control
    characters (NUL, ESC, ...) are written as \\xNN escapes, the length is bounded."""
    text = " ".join(str(text).split())
    text = "".join(f"\\x{ord(c):02x}" if c < " " or c == "\x7f" else c for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reason_of(err: BaseException) -> str:
    """A one-line reason for an exception; our own errors already read as reasons."""
    from .audio_errors import AudioError
    from .encoders import EncoderError

    if isinstance(err, (AudioError, EncoderError)):
        return one_line(str(err))
    return one_line(f"{type(err).__name__}: {err}")


class ErrorLog:
    """``errors-<tag>.tsv`` (``id<TAB>stage<TAB>reason``), rewritten by every run, a line
    flushed as soon as it is known (a killed run still shows what failed so far)."""

    def __init__(self, path: str | os.PathLike, stages: tuple[str, ...] = STAGES):
        self.path, self.stages = Path(path), stages
        self.counts: Counter[str] = Counter()
        # backslashreplace: an id with invalid UTF-8 (a manifest problem) still gets its line.
        self._file = open(self.path, "w", encoding="utf-8", errors="backslashreplace", newline="\n")
        self._file.write(HEADER)
        self._file.flush()

    def add(self, uid: str, stage: str, reason: str) -> None:
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}")
        self._file.write(f"{one_line(uid, 200)}\t{stage}\t{one_line(reason)}\n")
        self._file.flush()
        self.counts[stage] += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> ErrorLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_errors(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """The ``(id, stage, reason)`` lines of an errors file (for tests and tools)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] + "\n" != HEADER:
        raise ValueError(f"{path}: not a ksr errors file (header {HEADER.strip()!r})")
    return [tuple(line.split("\t", 2)) for line in lines[1:]]  # type: ignore[misc]


@dataclass
class ExtractSummary:
    """The counts of one run (all ranks, once merged)."""

    cache_dir: Path
    total: int = 0  # manifest rows, rejected ones included
    stored_before: int = 0  # already in the cache: skipped without encoding
    extracted: int = 0  # encoded and stored by this run
    skipped: int = 0  # label not in the classes
    failed: dict[str, int] = field(default_factory=dict)  # stage -> utterances
    audio_seconds: float = 0.0  # audio of the utterances extracted now
    seconds: float = 0.0  # wall time of the extraction loop (slowest rank)
    ranks: int = 1
    errors_files: list[Path] = field(default_factory=list)
    classes: tuple[str, ...] = ()  # the cache's classes, in its order
    class_counts: dict[str, int] = field(default_factory=dict)  # class -> this manifest's utterances in the cache
    attributes: tuple[str, ...] = ()  # the numeric attributes the cache stores
    attribute_range: tuple[float, float] | None = None  # the corpus's declared scale (None: not known)
    attribute_missing: dict[str, int] = field(default_factory=dict)  # name -> utterances extracted now without it
    attribute_problems: list[str] = field(default_factory=list)  # one line per utterance with an unusable value

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def accounted(self) -> int:
        """Rows in some bucket; equals ``total`` (checked by the tests)."""
        return self.stored_before + self.extracted + self.skipped + self.failed_total

    @property
    def utterances_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    @property
    def realtime(self) -> float:
        """Seconds of audio extracted per second of wall time."""
        return self.audio_seconds / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def merge(cls, parts: Iterable[ExtractSummary]) -> ExtractSummary:
        """The summary of a multi-rank run from its ranks' summaries."""
        parts = list(parts)
        failed: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        missing: Counter[str] = Counter()
        for p in parts:
            failed.update(p.failed)
            counts.update(p.class_counts)
            missing.update(p.attribute_missing)
        return cls(
            cache_dir=parts[0].cache_dir,
            total=sum(p.total for p in parts),
            stored_before=sum(p.stored_before for p in parts),
            extracted=sum(p.extracted for p in parts),
            skipped=sum(p.skipped for p in parts),
            failed={s: failed[s] for s in STAGES if failed[s]},
            audio_seconds=sum(p.audio_seconds for p in parts),
            seconds=max(p.seconds for p in parts),
            ranks=len(parts),
            errors_files=[f for p in parts for f in p.errors_files],
            classes=parts[0].classes,
            class_counts={c: counts[c] for c in parts[0].classes},
            attributes=parts[0].attributes,
            attribute_range=parts[0].attribute_range,
            attribute_missing={a: missing[a] for a in parts[0].attributes},
            attribute_problems=[line for p in parts for line in p.attribute_problems],
        )

    def warnings(self) -> list[str]:
        """One line naming the classes with fewer than :data:`MIN_CLASS_UTTERANCES` utterances
        in the cache (none when every class has enough)."""
        few = [(c, self.class_counts.get(c, 0)) for c in self.classes]
        few = [(c, n) for c, n in few if n < MIN_CLASS_UTTERANCES]
        if not few:
            return []
        named = ", ".join(f"{c!r} ({n})" for c, n in few)
        return [
            f"{len(few)} class(es) with fewer than {MIN_CLASS_UTTERANCES} utterances in the cache: {named}; "
            f"a mistyped label in the manifest? Correct it, or name the classes with --classes (other labels "
            f"are then skipped), in a new cache"
        ]

    def attribute_lines(self) -> list[str]:
        """The attributes stored, how many utterances of this run miss each, and one line per
        utterance whose value was unusable (not a number, or outside the corpus's scale)."""
        if not self.attributes:
            return []
        scale = (
            f"scale {self.attribute_range[0]:g}-{self.attribute_range[1]:g}"
            if self.attribute_range
            else "no declared scale"
        )
        missing = ", ".join(f"{a} {self.attribute_missing.get(a, 0)}" for a in self.attributes)
        lines = [
            f"attributes {', '.join(self.attributes)} ({scale}): missing (left empty) in the utterances "
            f"extracted now: {missing}; {len(self.attribute_problems)} utterance(s) with unusable values"
            + (", stored as missing:" if self.attribute_problems else "")
        ]
        return lines + [f"  {line}" for line in self.attribute_problems]

    def format(self) -> str:
        failed = ", ".join(f"{stage} {n}" for stage, n in self.failed.items())
        lines = [
            f"{self.total} manifest rows: {self.stored_before} stored before, {self.extracted} "
            f"extracted now, {self.skipped} skipped (label not in the classes), "
            f"{self.failed_total} failed" + (f" ({failed})" if failed else ""),
        ]
        if self.classes:
            counts = ", ".join(f"{c} {self.class_counts.get(c, 0)}" for c in self.classes)
            lines.append(f"per class (this manifest's utterances in the cache): {counts}")
        if self.extracted:
            lines.append(
                f"{self.extracted} utterances ({self.audio_seconds / 60:.1f} min of audio) in "
                f"{self.seconds:.1f} s: {self.utterances_per_second:.1f} utterances/s, "
                f"{self.realtime:.1f} s of audio per second" + (f" ({self.ranks} ranks)" if self.ranks > 1 else "")
            )
        lines += self.attribute_lines()
        left_out = self.skipped + self.failed_total
        where = ", ".join(str(p) for p in self.errors_files) or "(none)"
        lines.append(f"cache: {self.cache_dir}; errors file: {where} ({left_out} lines: one per utterance left out)")
        return "\n".join(lines)
