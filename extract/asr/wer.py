"""Word error rate of a machine transcript against a human one (``ksr transcribe``'s report).

Both texts are normalised the same way before they are compared, so that only the words count:

- bracketed non-speech tags are dropped (``[LAUGHTER]``, ``[BREATHING]``, ``<noise>``: IEMOCAP
  writes them; an ASR model does not);
- case is folded (``casefold``);
- every character that is not a letter, a digit or an apostrophe becomes a space (commas, dots,
  quotes, dashes: ``well-known`` is two words), and apostrophes at the edges of a word go
  (``'cause`` -> ``cause``; ``don't`` stays one word);
- the rest is split on whitespace.

WER = (substitutions + deletions + insertions) / reference words, the edits being the fewest that
turn the reference word list into the hypothesis (Levenshtein distance over words). Over a set of
utterances the edits and the reference words are summed first (the corpus WER, as ASR papers
report it), not the per-utterance rates averaged.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

_TAGS = re.compile(r"\[[^\[\]]*\]|<[^<>]*>")
_APOSTROPHES = "'\u2019"


def normalise_words(text: str) -> list[str]:
    """The words of ``text`` as WER compares them (see the module's docstring)."""
    text = _TAGS.sub(" ", unicodedata.normalize("NFKC", text)).casefold()
    kept = []
    for ch in text:
        if ch in _APOSTROPHES:
            kept.append("'")
        elif unicodedata.category(ch)[0] in "LNM":  # letters, numbers, combining marks
            kept.append(ch)
        else:
            kept.append(" ")
    return [w.strip("'") for w in "".join(kept).split() if w.strip("'")]


def word_edits(reference: list[str], hypothesis: list[str]) -> int:
    """The Levenshtein distance between two word lists: the fewest substitutions, deletions
    and insertions that turn ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))  # distances from the empty reference prefix
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(
                min(
                    previous[j] + 1,  # reference word deleted
                    current[j - 1] + 1,  # hypothesis word inserted
                    previous[j - 1] + (ref != hyp),  # substituted, or the same word
                )
            )
        previous = current
    return previous[-1]


@dataclass
class WordErrors:
    """Edits and reference words summed over utterances; ``rate`` is the corpus WER."""

    edits: int = 0
    reference_words: int = 0
    utterances: int = 0

    def add(self, reference: str, hypothesis: str) -> None:
        ref, hyp = normalise_words(reference), normalise_words(hypothesis)
        self.edits += word_edits(ref, hyp)
        self.reference_words += len(ref)
        self.utterances += 1

    @property
    def rate(self) -> float | None:
        """Edits per reference word (1.0 = 100%); None with no reference words (it may exceed 1)."""
        return self.edits / self.reference_words if self.reference_words else None

    def to_dict(self) -> dict:
        return {
            "wer": self.rate,
            "edits": self.edits,
            "reference_words": self.reference_words,
            "utterances": self.utterances,
        }


def word_error_rate(pairs: Iterable[tuple[str, str]]) -> WordErrors:
    """The corpus WER of ``(reference, hypothesis)`` pairs."""
    errors = WordErrors()
    for reference, hypothesis in pairs:
        errors.add(reference, hypothesis)
    return errors
