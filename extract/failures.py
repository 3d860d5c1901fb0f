"""Failures in a batch loop: one bad item costs only itself, a broken model stops the run.

``ksr extract`` (its encoders) and ``ksr transcribe`` (its recogniser) both run a model over
batches of utterances. A batch that fails is run again one item at a time, so that one bad
utterance (or a GPU out of memory on a large batch) fails alone with its one-line reason; but
when every item fails from the start, the model is broken, not the items, and the run stops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..common import KsrError
from .summary import reason_of

#: Stop when the first this-many encoder calls all fail: a broken encoder, not bad items.
FAILFAST = 16


class ExtractError(KsrError, RuntimeError):
    """A problem of the whole run (not of one utterance); the message is one line."""


class Breaker:
    """Tell a broken encoder (every call fails from the start) from a few bad utterances."""

    def __init__(self, stage: str):
        self.stage, self.ok, self.failed = stage, 0, 0

    def record(self, ok: int, failed: int, reason: str) -> None:
        self.ok += ok
        self.failed += failed
        if self.ok == 0 and self.failed >= FAILFAST:
            raise ExtractError(
                f"the {self.stage} failed on the first {self.failed} utterances (last: {reason}); stopping"
            )


def encode_isolated(
    encode: Callable[[list], list], items: list, on_fail: Callable[[int, str], None], breaker: Breaker
) -> list[torch.Tensor | None]:
    """Encode a batch; if it fails, encode its items one at a time so that one bad item (or a
    GPU out of memory on a large batch) costs only itself."""
    if not items:
        return []
    try:
        out = list(encode(items))
        breaker.record(len(out), 0, "")
        return out
    except ExtractError:
        raise
    except Exception as err:  # noqa: BLE001 - isolated below, reported per utterance
        if len(items) == 1:
            on_fail(0, reason_of(err))
            breaker.record(0, 1, reason_of(err))
            return [None]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    out: list[torch.Tensor | None] = []
    for i, item in enumerate(items):
        try:
            out.append(encode([item])[0])
            breaker.record(1, 0, "")
        except Exception as err:  # noqa: BLE001
            on_fail(i, reason_of(err))
            out.append(None)
            breaker.record(0, 1, reason_of(err))
    return out
