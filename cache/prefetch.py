"""Reading the next batches while the current one computes.

``prefetched(make, parts, device)`` yields ``make(part)`` for each part, on ``device``, in order:

- ``ahead`` batches are built on background threads (reading from disk and gathering release
  the GIL), so a stream-mode read or a host-mode gather overlaps the model's step;
- on CUDA, each batch is built in pinned memory and copied to the GPU on a side stream one step
  ahead; the batch's host memory is kept until its copy has finished (a CUDA event), so it is
  never reused while the copy engine still reads it.

Threads, not processes: the work is I/O and memory copies, and the batches come back in order,
so results do not depend on ``ahead``. An exception in a worker is raised when its batch is
next; leaving the loop early (``break``, an error in the step) cancels what is still queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

#: Batches built ahead of the one computing: enough to hide a cold stream read behind a step.
DEFAULT_AHEAD = 3
#: Threads building them (several requests in flight let a disk serve them in parallel).
DEFAULT_WORKERS = 2


def prefetched(
    make: Callable[[Any], Any],
    parts: Iterable[Any],
    device: torch.device,
    ahead: int = DEFAULT_AHEAD,
    workers: int = DEFAULT_WORKERS,
    advise: Callable[[Any], None] | None = None,
) -> Iterator[Any]:
    """``make(part).to(device)`` for every part, in order, with ``ahead`` parts built early.
    ``make`` returns an object with ``.to(device, non_blocking=...)`` (a ``Batch``).
    ``advise(part)``, if given, is called as a part is queued (to start its disk reads)."""
    parts = iter(parts)
    if ahead < 1:
        for part in parts:
            yield make(part).to(device)
        return
    mover = _CudaMover(device) if device.type == "cuda" else None
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="ksr-prefetch")
    queued: deque[Future] = deque()
    try:
        submit = lambda part: (advise(part) if advise is not None else None, pool.submit(make, part))[1]
        for part in parts:
            queued.append(submit(part))
            if len(queued) >= ahead:
                break
        staged = None
        while queued:
            batch = queued.popleft().result()
            part = next(parts, _END)
            if part is not _END:
                queued.append(submit(part))
            if mover is None:
                yield batch.to(device)
                continue
            # Start this batch's copy, then hand over the previous one: its copy had a step to run.
            previous, staged = staged, mover.start(batch)
            if previous is not None:
                yield mover.finish(previous)
        if staged is not None:
            yield mover.finish(staged)
    finally:
        for f in queued:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


_END = object()


class _CudaMover:
    """Host-to-GPU copies on a side stream; host batches are kept until their copy is done."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.in_flight: deque[tuple[torch.cuda.Event, Any]] = deque()

    def start(self, batch: Any) -> tuple[Any, torch.cuda.Event]:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            moved = batch.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.in_flight.append((done, batch))
        while self.in_flight and self.in_flight[0][0].query():  # copies done: host memory free again
            self.in_flight.popleft()
        return moved, done

    def finish(self, staged: tuple[Any, torch.cuda.Event]) -> Any:
        moved, done = staged
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for value in vars(moved).values():  # memory made on the side stream, used on this one
            if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                value.record_stream(current)
        return moved
