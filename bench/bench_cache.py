"""ksr.cache: a full pass over a 2,000-utterance cache at the default dims (460 x 512 audio,
20 x 1024 text, float16), against one file per utterance read and padded in Python.

Goals (issue 4): in-memory pass >= 10x the per-file baseline; stream >= 0.5x in-memory; size on
disk within 2% of N x (460 x 512 + 20 x 1024) x 2 bytes. Also measured: writer throughput,
open/load time (with SHA-256 checks), a stream pass with the page cache dropped, and the layouts
the schema chose between (contiguous rows read with pread against HDF5 chunked reads).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from ksr.cache import CacheWriter, open_cache
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances

BATCH = 32
SEED = 0


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call. The machine may be shared: CPU time (this process's user
    + system time) does not count the time other work took the cores, so for single-threaded
    code it is close to what the wall clock would say on an idle machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _write(root: Path, base: Path, n: int, meta) -> tuple[float, float]:
    """Write the cache and the per-utterance baseline files from the same utterances; returns
    seconds spent in CacheWriter.add/close and in writing the baseline files."""
    t_cache = t_base = 0.0
    base.mkdir()
    with CacheWriter(root, meta, shard_size=512) as w:
        for u in synthetic_utterances(n, meta, seed=SEED):
            t = time.perf_counter()
            np.savez(base / f"{u['id']}.npz", audio=u["audio"], text=u["text"], label=meta.classes.index(u["label"]))
            t_base += time.perf_counter() - t
            t = time.perf_counter()
            w.add(**u)
            t_cache += time.perf_counter() - t
        t = time.perf_counter()
    t_cache += time.perf_counter() - t
    return t_cache, t_base


def _baseline_pass(base: Path, ids: list[str], order: list[int], ta: int, tt: int) -> None:
    """What the public implementation does every epoch: open one file per utterance, pad or cut
    it in Python, stack the batch, make the masks."""
    for s in range(0, len(order), BATCH):
        audios, texts, alens, tlens, labels = [], [], [], [], []
        for i in order[s : s + BATCH]:
            with np.load(base / f"{ids[i]}.npz") as z:
                a, t, label = z["audio"], z["text"], int(z["label"])
            pa = np.zeros((ta, a.shape[1]), np.float32)
            pa[: min(len(a), ta)] = a[:ta]
            pt = np.zeros((tt, t.shape[1]), np.float32)
            pt[: min(len(t), tt)] = t[:tt]
            audios.append(pa)
            texts.append(pt)
            alens.append(min(len(a), ta))
            tlens.append(min(len(t), tt))
            labels.append(label)
        # the batch a loader would hand over (built only to be timed)
        _batch = (
            torch.from_numpy(np.stack(audios)),
            torch.from_numpy(np.stack(texts)),
            torch.arange(ta)[None, :] >= torch.tensor(alens)[:, None],
            torch.arange(tt)[None, :] >= torch.tensor(tlens)[:, None],
            torch.tensor(labels),
        )


def _cache_pass(cache) -> None:
    for _ in cache.loader(batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(SEED)):
        pass


def _drop_page_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _layouts(shard_path: Path, tmp: Path, reps: int) -> list[tuple[str, float]]:
    """Random single-utterance reads (a shuffled epoch's access) of float16 audio rows, by layout."""
    with h5py.File(shard_path, "r") as f:
        data = f["audio"][()]
    n = len(data)
    rows = np.random.default_rng(1).permutation(n)
    out = np.empty(data.shape[1:], data.dtype)
    results = []

    def contiguous_pread(path):
        with h5py.File(path, "r") as f:
            offset = f["audio"].id.get_offset()
        fd = os.open(path, os.O_RDONLY)
        view = memoryview(out).cast("B")
        try:

            def go():
                for r in rows:
                    os.preadv(fd, [view], offset + int(r) * out.nbytes)

            return min(_timed(go)[1] for _ in range(reps))
        finally:
            os.close(fd)

    def h5_rows(path):
        with h5py.File(path, "r") as f:
            d = f["audio"]
            fs, ms = d.id.get_space(), h5py.h5s.create_simple((1,) + out.shape)

            def go():
                for r in rows:
                    fs.select_hyperslab((int(r), 0, 0), (1,) + out.shape)
                    d.id.read(ms, fs, out[None])

            return min(_timed(go)[1] for _ in range(reps))

    # Every layout is written afresh from the same rows, so all are equally warm in the page cache.
    for chunk, fletcher in ((None, False), (1, False), (1, True), (8, False)):
        path = tmp / f"layout-{chunk}-{fletcher}.h5"
        with h5py.File(path, "w", libver="v110", alignment_threshold=1 << 16, alignment_interval=4096) as f:
            f.create_dataset(
                "audio", data=data, chunks=(chunk,) + data.shape[1:] if chunk else None, fletcher32=fletcher
            )
        if chunk is None:
            results.append(("contiguous, positioned read per row (schema v1)", n / contiguous_pread(path)))
            results.append(("contiguous, HDF5 read per row", n / h5_rows(path)))
        else:
            label = f"chunks of {chunk} utterance{'s' if chunk > 1 else ''}" + (", fletcher32" if fletcher else "")
            results.append((label + ", HDF5 read per row", n / h5_rows(path)))
        path.unlink()
    return results


def run(quick: bool) -> str:
    n = 300 if quick else 2000
    reps = 2 if quick else 5
    meta = synthetic_meta()  # the default dims, float16
    tmp = Path(tempfile.mkdtemp(prefix="ksr-bench-cache-"))
    try:
        root, base = tmp / "cache", tmp / "per-utterance"
        t_write, t_base_write = _write(root, base, n, meta)
        shards = sorted(root.glob("shard-*.h5"))
        disk = sum(f.stat().st_size for f in root.iterdir() if not f.name.startswith("."))
        ideal = n * (meta.audio_row_bytes + meta.text_row_bytes)

        t0 = time.perf_counter()
        memory = open_cache(root, mode="memory", progress=False)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        stream = open_cache(root, mode="stream", progress=False)
        t_open_stream = time.perf_counter() - t0
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()

        # Each kind of pass runs back to back after one warm-up pass, as in training (interleaving
        # them made every pass pay page faults for the memory the others had handed back).
        passes = {
            "baseline": lambda: _baseline_pass(base, memory.ids, order, meta.max_audio_len, meta.max_text_len),
            "memory": lambda: _cache_pass(memory),
            "stream": lambda: _cache_pass(stream),
        }
        timings = {}
        for k, fn in passes.items():
            fn()
            timings[k] = [_timed(fn) for _ in range(reps)]
        wall = {k: n / min(w for w, _ in v) for k, v in timings.items()}
        wall_median = {k: n / statistics.median(w for w, _ in v) for k, v in timings.items()}
        cpu = {k: n / min(c for _, c in v) for k, v in timings.items()}

        stream.close()
        _drop_page_cache(shards)
        t0 = time.perf_counter()
        cold = open_cache(root, mode="stream", verify=False, progress=False)
        _cache_pass(cold)
        t_cold = time.perf_counter() - t0
        cold.close()
        _drop_page_cache(sorted(base.iterdir()))
        t0 = time.perf_counter()
        _baseline_pass(base, memory.ids, order, meta.max_audio_len, meta.max_text_len)
        t_base_cold = time.perf_counter() - t0
        memory.close()

        layouts = _layouts(shards[0], tmp, reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()[0]
    ok = lambda good: "**met**" if good else "**NOT met**"
    ratio = lambda rates, a, b: rates[a] / rates[b]
    row = lambda label, k: (
        f"| {label} | {wall[k]:,.0f} ({wall_median[k]:,.0f}) | {cpu[k]:,.0f} | "
        f"{ratio(wall, k, 'baseline'):.1f}x | {ratio(cpu, k, 'baseline'):.1f}x |"
    )
    lines = [
        "## ksr.cache: feature cache",
        "",
        f"{n} synthetic utterances at the default dims (audio 80..999 frames x 512, cut/padded to 460; "
        f"text 3..39 tokens x 1024, cut/padded to 20), float16 cache; a shuffled epoch in batches of "
        f"{BATCH}, each batch float32 audio and text, bool masks, labels and ids. Baseline: one `.npz` "
        f"per utterance (float32 at its true length, like the public implementation's one `.mat` per "
        f"utterance), opened, padded and stacked in Python every epoch. Page cache warm unless said. "
        f"{reps} passes of each after a warm-up pass: best wall-clock rate (median in brackets), and the rate "
        f"by this process's CPU time, which leaves out time other work took the cores. torch threads "
        f"{torch.get_num_threads()}; 1-minute load average at the end {load:.1f} on {os.cpu_count()} cores.",
        "",
        "| full pass | utt/s, wall | utt/s, CPU time | vs baseline, wall | vs baseline, CPU |",
        "|---|---|---|---|---|",
        row("baseline: one file per utterance, padded in Python", "baseline"),
        row("cache, memory mode (after the load)", "memory"),
        row("cache, stream mode", "stream"),
        "",
        f"- goal in-memory >= 10x the baseline: {ratio(wall, 'memory', 'baseline'):.1f}x by wall clock "
        f"{ok(ratio(wall, 'memory', 'baseline') >= 10)}, {ratio(cpu, 'memory', 'baseline'):.1f}x by CPU time "
        f"{ok(ratio(cpu, 'memory', 'baseline') >= 10)}",
        f"- goal stream >= 0.5x in-memory: {ratio(wall, 'stream', 'memory'):.2f}x by wall clock "
        f"{ok(ratio(wall, 'stream', 'memory') >= 0.5)}, {ratio(cpu, 'stream', 'memory'):.2f}x by CPU time "
        f"{ok(ratio(cpu, 'stream', 'memory') >= 0.5)}",
        f"- goal size on disk within 2% of ideal: {disk / 1e6:,.1f} MB for an ideal {ideal / 1e6:,.1f} MB "
        f"({100 * (disk - ideal) / ideal:+.3f}%, {len(shards)} shards + index) {ok(disk <= 1.02 * ideal)}",
        f"- page cache dropped: stream mode open + 1 pass {n / t_cold:,.0f} utt/s; the baseline, also "
        f"cold, {n / t_base_cold:,.0f} utt/s",
        f"- open in memory mode (read + SHA-256 of every shard): {t_load:.2f} s ({disk / t_load / 1e9:.2f} GB/s); "
        f"stream mode open with SHA-256: {t_open_stream:.2f} s",
        f"- writer: {n / t_write:,.0f} utterances/s (pad, convert, check, write, fsync, hash); the "
        f"baseline's `np.savez`: {n / t_base_write:,.0f}/s",
        "",
        "Layout the schema chose (random single-utterance reads of float16 audio rows from one "
        "512-utterance shard in the page cache, by CPU time):",
        "",
        "| layout | rows/s |",
        "|---|---|",
    ] + [f"| {name} | {r:,.0f} |" for name, r in layouts]
    return "\n".join(lines)
