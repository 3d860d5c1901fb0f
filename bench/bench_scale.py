"""Scale (issue 24): opening a cache of many utterances, and streaming one larger than comfort.

(a) Metadata of 150,000 utterances with tiny features (8 x 8 audio, 2 x 8 text, float16): the time
    and peak memory of ``open_cache`` in a fresh process, the first open (every shard hashed and
    stamped) and a later one (stamps trusted). Goal: open < 10 s.
(b) A cache of at least 6 GB at the default dims (460 x 512 audio, 20 x 1024 text, float16): its
    shard files read sequentially with the page cache dropped for them (``posix_fadvise``
    DONTNEED), against a shuffled stream-mode epoch (batches of 32, float32, the prefetch thread
    reading ahead), also cold; the process's memory sampled over the epoch. Goal: >= 0.8x, and flat.
(c) The process's memory at each quarter of 3 warm stream-mode epochs of a 1 GB cache.

Caches go under ``--scale-dir`` (default: a temporary folder) and are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ksr.cache import CacheWriter, open_cache, verify_cache
from ksr.cache.synthetic import synthetic_meta, write_synthetic_cache

BATCH = 32
READ_BLOCK = 8 << 20


def add_options(parser) -> None:
    parser.add_argument("--scale-dir", default=None, help="scale bench: where its caches go (deleted after)")
    parser.add_argument("--scale-gb", type=float, default=6.0, help="scale bench: size of the streamed cache, GB")
    parser.add_argument("--scale-utterances", type=int, default=150_000, help="scale bench: utterances of (a)")
    parser.add_argument(
        "--scale-part",
        choices=("all", "a"),
        default="all",
        help="scale bench: 'a' reruns the open of (a) and the memory series (c) and keeps (b) from the results file",
    )


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _drop_page_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_OPEN_SCRIPT = """
import json, resource, sys, time
t = time.perf_counter()
from ksr.cache import open_cache
t_import = time.perf_counter() - t
t, cpu = time.perf_counter(), time.process_time()
c = open_cache(sys.argv[1], mode="stream", progress=False)
took, cpu = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps({"open_s": took, "cpu_s": cpu, "import_s": t_import, "n": len(c),
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _open_in_fresh_process(root: Path) -> dict:
    done = subprocess.run([sys.executable, "-P", "-c", _OPEN_SCRIPT, str(root)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _metadata(root: Path, n: int) -> list[str]:
    meta = synthetic_meta(audio_dim=8, text_dim=8, max_audio_len=8, max_text_len=2)
    t = time.perf_counter()
    write_synthetic_cache(root, n, meta, seed=0, shard_size=512, audio_lengths=[8] * n, text_lengths=[2] * n)
    t_write = time.perf_counter() - t
    shards = len(list(root.glob("shard-*.h5")))
    time.sleep(2.5)  # stamps trust files whose last change is 2 s older than their hashing (stamps.RACY_NS)
    first = _open_in_fresh_process(root)
    later = _open_in_fresh_process(root)
    ok = "**met**" if later["open_s"] < 10 else "**NOT met**"
    mb = lambda b: f"{b / 1e6:,.0f} MB"
    return [
        f"### (a) {n:,} utterances of metadata ({shards} shards of 512, tiny features)",
        "",
        "`open_cache(mode='stream')` in a fresh process (import time not counted; peak RSS includes torch and h5py).",
        "",
        "| open | seconds | CPU seconds | peak RSS |",
        "|---|---|---|---|",
        f"| first (every shard hashed, stamps written) | {first['open_s']:.2f} | {first['cpu_s']:.2f} | "
        f"{mb(first['peak_rss'])} |",
        f"| later (stamps trusted, nothing hashed) | {later['open_s']:.2f} | {later['cpu_s']:.2f} | "
        f"{mb(later['peak_rss'])} |",
        "",
        f"- goal open < 10 s: {later['open_s']:.2f} s {ok} ({later['cpu_s']:.2f} s of CPU time, which "
        f"leaves out the time other jobs took the cores); writing the cache took {t_write:.0f} s",
    ]


def _write_big(root: Path, gb: float) -> int:
    """A cache of ``gb`` GB at the default dims; rows cycle through 64 random utterances (what
    is read does not matter here, only how)."""
    meta = synthetic_meta()
    n = int(gb * 1e9 / (meta.audio_row_bytes + meta.text_row_bytes)) + 1
    rng = np.random.default_rng(0)
    pool = [
        (rng.standard_normal((460, 512), dtype=np.float32), rng.standard_normal((20, 1024), dtype=np.float32))
        for _ in range(64)
    ]
    with CacheWriter(root, meta, shard_size=512) as w:
        for i in range(n):
            a, t = pool[i % 64]
            k = 80 + (i * 37) % 380
            w.add(f"u{i:07d}", a[:k], t[: 3 + i % 17], meta.classes[i % 4], session=str(1 + i % 5))
    return n


def _sequential_read(paths: list[Path]) -> tuple[float, int]:
    _drop_page_cache(paths)
    buf = bytearray(READ_BLOCK)
    total = 0
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while got := f.readinto(buf):
                total += got
    return time.perf_counter() - t, total


def _stream_epoch(root: Path, paths: list[Path], cold: bool = True) -> dict:
    if cold:
        _drop_page_cache(paths)
    t = time.perf_counter()
    cache = open_cache(root, mode="stream", progress=False)
    t_open = time.perf_counter() - t
    rss = [_rss()]
    g = torch.Generator().manual_seed(0)
    t, cpu = time.perf_counter(), time.process_time()
    for k, batch in enumerate(cache.loader(batch_size=BATCH, shuffle=True, generator=g)):
        if k % 20 == 0:
            rss.append(_rss())
        del batch
    took, cpu = time.perf_counter() - t, time.process_time() - cpu
    rss.append(_rss())
    out = {"open_s": t_open, "epoch_s": took, "cpu_s": cpu, "bytes": cache.feature_bytes, "n": len(cache), "rss": rss}
    cache.close()
    return out


def _streamed(root: Path, gb: float) -> list[str]:
    t = time.perf_counter()
    n = _write_big(root, gb)
    t_write = time.perf_counter() - t
    paths = sorted(root.glob("shard-*.h5"))
    time.sleep(2.5)
    _drop_page_cache(paths)
    t = time.perf_counter()
    assert verify_cache(root, progress=False).ok  # hashes every shard and stamps it
    t_verify = time.perf_counter() - t
    disk = sum(p.stat().st_size for p in paths)
    t_seq, read = _sequential_read(paths)
    warm = _stream_epoch(root, paths, cold=False)  # the files are in the page cache after that read
    epoch = _stream_epoch(root, paths)
    seq_rate, epoch_rate = read / t_seq, epoch["bytes"] / epoch["epoch_s"]
    ratio = epoch_rate / seq_rate
    rss = epoch["rss"]
    growth = rss[-1] - rss[1]
    ok = "**met**" if ratio >= 0.8 else "**NOT met**"
    return [
        f"### (b) streaming a {disk / 1e9:.2f} GB cache ({n:,} utterances, {len(paths)} shards), page cache dropped",
        "",
        "| pass | seconds | GB/s |",
        "|---|---|---|",
        f"| shard files read sequentially (8 MB reads) | {t_seq:.1f} | {seq_rate / 1e9:.2f} |",
        f"| stream-mode epoch, shuffled, batches of {BATCH}, float32 (rows read) | {epoch['epoch_s']:.1f} | "
        f"{epoch_rate / 1e9:.2f} |",
        f"| the same epoch, page cache warm (no disk read: what the CPU allows) | {warm['epoch_s']:.1f} | "
        f"{warm['bytes'] / warm['epoch_s'] / 1e9:.2f} |",
        f"| `ksr cache verify` (SHA-256 of every shard, then every value checked finite; cold) | {t_verify:.1f} | {disk / t_verify / 1e9:.2f} |",
        "",
        f"- goal stream epoch >= 0.8x sequential: {ratio:.2f}x {ok} ({epoch['n'] / epoch['epoch_s']:,.0f} utt/s; "
        f"the epoch's CPU time {epoch['cpu_s']:.1f} s of its {epoch['epoch_s']:.1f} s; warm: "
        f"{warm['cpu_s']:.1f} s of {warm['epoch_s']:.1f} s)",
        f"- open of the stamped cache, page cache dropped: {epoch['open_s']:.2f} s (nothing hashed)",
        f"- memory over the epoch (RSS every 20 batches): {min(rss) / 1e6:,.0f}-{max(rss) / 1e6:,.0f} MB; "
        f"from the first batches to the end {growth / 1e6:+,.0f} MB",
        f"- writing the cache took {t_write:.0f} s",
    ]


def _memory_series(root: Path, gb: float, epochs: int = 3) -> list[str]:
    """RSS over several warm stream-mode epochs of a smaller cache: does memory settle or grow?"""
    _write_big(root, gb)
    cache = open_cache(root, mode="stream", verify=False, progress=False)
    g = torch.Generator().manual_seed(0)
    marks = []
    for _ in range(epochs):
        loader = cache.loader(batch_size=BATCH, shuffle=True, generator=g)
        quarter = max(1, len(loader) // 4)
        for k, batch in enumerate(loader):
            if k % quarter == quarter - 1:
                marks.append(_rss())
            del batch
    cache.close()
    series = ", ".join(f"{m / 1e6:,.0f}" for m in marks)
    return [
        f"### (c) memory over {epochs} stream-mode epochs of a {gb:.2f} GB cache (page cache warm)",
        "",
        f"- RSS at each quarter of each epoch, MB: {series}",
        f"- from the end of the first epoch to the end of the last: {(marks[-1] - marks[3]) / 1e6:+,.0f} MB",
    ]


def _kept_part_b(options) -> list[str]:
    """(b) as the results file has it (``--scale-part a`` does not rerun the 6 GB pass)."""
    path = Path(getattr(options, "out", "") or Path(__file__).with_name("results.md"))
    text = path.read_text() if path.exists() else ""
    start = text.find("### (b)")
    if start < 0:
        return ["### (b) not run (`--scale-part a`, and the results file had none)"]
    end = min(i for i in (text.find("### (c)", start), text.find("<!-- bench:", start), len(text)) if i >= 0)
    if "(b) as measured on" in text[start:end]:  # kept once already: it says when it was measured
        return [text[start:end].rstrip("\n")]
    dated = text.rfind("- date: ", 0, start)
    when = text[dated + len("- date: ") : text.find("\n", dated)] if dated >= 0 else "an earlier run"
    return [text[start:end].rstrip("\n"), "", f"(b) as measured on {when}, not rerun with (a) and (c)."]


def run(quick: bool, options=None) -> str:
    n = 20_000 if quick else getattr(options, "scale_utterances", 150_000)
    gb = 0.5 if quick else getattr(options, "scale_gb", 6.0)
    base = getattr(options, "scale_dir", None)
    only_a = getattr(options, "scale_part", "all") == "a"
    kept = _kept_part_b(options) if only_a else []
    tmp = Path(tempfile.mkdtemp(prefix="ksr-bench-scale-", dir=base))
    try:
        lines = _metadata(tmp / "meta", n)
        shutil.rmtree(tmp / "meta")
        lines += [""] + (kept if only_a else _streamed(tmp / "big", gb))
        shutil.rmtree(tmp / "big", ignore_errors=True)
        lines += [""] + _memory_series(tmp / "series", 0.25 if quick else 1.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    head = [
        "## Scale: opening many utterances, streaming a large cache (issue 24)",
        "",
        f"1-minute load average at the end {load:.1f} on {os.cpu_count()} cores (other developers' jobs "
        f"were running: rates are lower bounds); torch threads {torch.get_num_threads()}.",
        "",
        "GPU: no GPU was lent to this work, so there are no GPU numbers here: neither utterances/s per "
        "mode (gpu / host / stream) nor the share of time a GPU waits for data. The copy path for CUDA "
        "(pinned batches, side-stream copies) is tested only where CUDA is present "
        "(`tests/cache/test_cache_modes.py::test_host_mode_on_cuda_pins_and_copies`, skipped here).",
        "",
    ]
    return "\n".join(head + lines)
