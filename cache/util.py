"""Small helpers for the cache's long operations: threads over shards and progress bars."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm


def map_in_threads(fn: Callable, items: list, workers: int | None = None) -> list:
    """``[fn(x) for x in items]`` over a few threads: reading and hashing release the GIL, so
    shards are checked in parallel. The first exception is raised once all calls are done."""
    workers = workers or min(4, os.cpu_count() or 1, max(1, len(items)))
    if workers == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="ksr-cache-io") as pool:
        return list(pool.map(fn, items))


def byte_bar(total: int, desc: str, progress: bool | None, enabled: bool = True) -> tqdm:
    """A tqdm bar counting bytes. ``progress``: True shows it, False hides it, None shows it only
    on a terminal. ``enabled=False`` hides it whatever ``progress`` says."""
    disable = True if not enabled or progress is False else (None if progress is None else False)
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False, disable=disable)
