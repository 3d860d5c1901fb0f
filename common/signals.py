"""SIGTERM handled like SIGINT: an exception that unwinds the stack, so committed work is kept.

SIGTERM is what ``timeout``, Slurm, systemd, docker and torchrun send to stop a process. Its
default action ends the process on the spot: safe for ksr's files (every one is committed
atomically), but the utterances buffered for the current shard are lost and no line says what
happened. Inside :func:`sigterm_raises` it raises :class:`Terminated` instead, as SIGINT raises
``KeyboardInterrupt``: ``with`` and ``finally`` blocks run (the cache writer writes its last,
partial shard) and the caller turns it into one line. Inside :func:`deferred` (a commit that
should not be cut: a shard being written, the files of an epoch) the signal is held until the
block ends. A second SIGTERM takes the default action again, which the commit protocols survive.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived. A ``BaseException``, like ``KeyboardInterrupt``: code that isolates the
    failures of one item (``except Exception``) lets it through."""

    def __init__(self) -> None:
        super().__init__("stopped by SIGTERM")


class _State(threading.local):
    depth = 0  # nested deferred() blocks
    pending = False  # a SIGTERM arrived inside one


_state = _State()


def _handler(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
    if _state.depth:
        _state.pending = True
        return
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread. Elsewhere (a
    thread cannot set signal handlers) the block runs unchanged. The previous handler is put
    back at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        _state.pending = False


class deferred:
    """A block that a SIGTERM does not cut: one that arrives inside raises :class:`Terminated`
    when the (outermost) block ends, unless it ends with an exception of its own."""

    def __enter__(self) -> deferred:
        _state.depth += 1
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending:
            _state.pending = False
            if exc_type is None:
                raise Terminated()
