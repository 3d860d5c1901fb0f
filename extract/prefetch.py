"""Reading the audio of the next batches in a background thread while the encoder runs.

soundfile and soxr do their work in C with the GIL released, so one reader thread overlaps
decoding and resampling with the encoder's forward pass. ``depth`` bounds how many batches
are read ahead (memory stays a few batches of audio). ``depth=0`` reads inline.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def _read_batch(batch: Sequence[T], read: Callable[[T], R]) -> list[R | BaseException]:
    """``read`` each item; an item's exception is its result (reported per utterance)."""
    out: list[R | BaseException] = []
    for item in batch:
        try:
            out.append(read(item))
        except Exception as err:  # noqa: BLE001 - per-item failures are the caller's to report
            out.append(err)
    return out


def read_ahead(
    batches: Sequence[Sequence[T]], read: Callable[[T], R], depth: int = 2
) -> Iterator[tuple[Sequence[T], list[R | BaseException]]]:
    """Yield ``(batch, results)`` in order, reading up to ``depth`` batches ahead in a thread.

    Closing the generator early (an exception in the consumer) stops the thread.
    """
    if depth <= 0:
        for batch in batches:
            yield batch, _read_batch(batch, read)
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():  # a timeout, so a consumer that left never blocks us forever
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put((batch, _read_batch(batch, read))):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer to re-raise
            put(err)
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="ksr-audio-reader", daemon=True)
    thread.start()
    try:
        while True:
            got = ready.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        thread.join(timeout=5)
