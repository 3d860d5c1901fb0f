"""Where features live (gpu / host / stream / auto) and the batches read ahead: the choice, the
same batches and the same training in every mode, errors and early exits of the prefetch."""

from __future__ import annotations

import os

import pytest
import torch
from support.tiny import tiny_cache, tiny_config

from ksr.cache import CacheError, open_cache
from ksr.cache.modes import DEFAULT_GPU_RESERVE, resolve_mode
from ksr.cache.prefetch import prefetched
from ksr.fuse.train.recipes import recipe
from ksr.fuse.train.runs import RunSpec, fold_files, model_config_for_cache, prepare_run
from ksr.fuse.train.training import train_fold

GB = 10**9
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache"), 60, seed=3, shard_size=8)


@pytest.mark.parametrize(
    "mode, size, device, gpu_free, ram, ranks, place",
    [
        ("auto", 10 * GB, CUDA, 80 * GB, 64 * GB, 1, "gpu"),  # fits beside the model
        ("auto", 75 * GB, CUDA, 80 * GB, 200 * GB, 1, "host"),  # 75 > 80 - 12.9 GB reserve
        ("auto", 150 * GB, CUDA, 80 * GB, 200 * GB, 1, "stream"),  # 150 > half of 200
        ("auto", 30 * GB, CUDA, 0, 100 * GB, 2, "stream"),  # two ranks share the node's RAM
        ("auto", 30 * GB, CUDA, 0, 100 * GB, 1, "host"),
        ("auto", 1 * GB, CPU, None, 4 * GB, 1, "host"),  # a CPU device never asks the GPU
        ("auto", 3 * GB, CPU, None, 4 * GB, 1, "stream"),
        ("memory", 500 * GB, CUDA, 0, 0, 1, "gpu"),  # asked for: no check, the old name
        ("memory", 500 * GB, CPU, None, 0, 1, "host"),
        ("gpu", 1, CPU, None, 0, 1, "host"),  # the CPU's device memory is host memory
        ("stream", 1, CUDA, 80 * GB, 80 * GB, 1, "stream"),
        ("host", 500 * GB, CUDA, 80 * GB, 1, 1, "host"),
    ],
)
def test_where_the_features_go(mode, size, device, gpu_free, ram, ranks, place):
    got, why = resolve_mode(mode, size, device, gpu_free=gpu_free, ram=ram, local_ranks=ranks)
    assert got == place, why


def test_the_reason_names_the_numbers():
    place, why = resolve_mode("auto", 75 * GB, CUDA, gpu_free=80 * GB, ram=400 * GB, local_ranks=2)
    reserve = f"{DEFAULT_GPU_RESERVE / GB:.1f} GB"
    assert place == "host"
    assert why == (
        f"the features (75.0 GB) do not fit in the free GPU memory (80.0 GB) less {reserve} for the model, and "
        f"take at most half of the 400.0 GB of RAM available (shared by 2 ranks on this node)"
    )
    assert resolve_mode("auto", 3 * GB, CPU, ram=4 * GB)[1] == (
        "the features (3.0 GB) take more than half of the 4.0 GB of RAM available"
    )
    assert resolve_mode("auto", 5 * GB, CUDA, gpu_reserve=76 * GB, gpu_free=80 * GB, ram=0)[0] == "stream"
    with pytest.raises(ValueError, match="cache mode 'disk': choose one of auto, gpu, host, stream, memory"):
        resolve_mode("disk", 1, CPU)


def _epoch(cache, ahead):
    g = torch.Generator().manual_seed(4)
    order = torch.randperm(len(cache), generator=g).numpy()
    return list(cache.batches([order[i : i + 7] for i in range(0, len(order), 7)], ahead=ahead))


def test_every_mode_gives_the_same_batches_read_ahead_or_not(cache_dir):
    reference = _epoch(open_cache(cache_dir, mode="host", progress=False), ahead=0)
    for mode in ("gpu", "host", "stream", "memory", "auto"):
        for ahead in (1, 3):
            got = _epoch(open_cache(cache_dir, mode=mode, progress=False), ahead=ahead)
            assert [b.ids for b in got] == [b.ids for b in reference]
            for a, b in zip(got, reference, strict=True):
                assert torch.equal(a.audio, b.audio) and torch.equal(a.text, b.text), mode
                assert torch.equal(a.audio_padding_mask, b.audio_padding_mask) and torch.equal(a.labels, b.labels)


def test_training_is_bit_identical_in_every_mode(cache_dir, tmp_path):
    """The whole training loop (prefetched batches, two epochs) on CPU ends with exactly the same
    weights and history whatever the mode."""
    finals = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded machine torch's spinning threads make this 5x slower
    try:
        for mode in ("host", "stream", "gpu"):
            finals[mode] = _train_state(cache_dir, tmp_path, mode)
    finally:
        torch.set_num_threads(threads)
    host = finals.pop("host")
    for mode, state in finals.items():
        assert state["history"] == host["history"], mode
        for k, v in host["model"].items():
            assert torch.equal(state["model"][k], v), (mode, k)


def _train_state(cache_dir, tmp_path, mode):
    with open_cache(cache_dir, mode=mode, progress=False) as cache:
        r = recipe("official", epochs=2, batch_size=8, lr=0.05)
        spec = RunSpec(model=model_config_for_cache(cache, tiny_config()), recipe=r, cache_meta=cache.meta.to_dict())
        run = tmp_path / mode
        prepare_run(run, spec, resume=False)
        train_fold(cache, spec, run, fold=2, seed=5, device=CPU, progress=False)
    return torch.load(fold_files(run, 5, 2, spec.protocol).state, weights_only=True)


def test_a_read_error_reaches_the_loop_at_its_batch(cache_dir, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(cache_dir, root)
    cache = open_cache(root, mode="stream", progress=False)
    last = sorted(root.glob("shard-*.h5"))[-1]
    os.truncate(last, last.stat().st_size // 2)  # the last utterances are in the last shard
    parts = [[0, 1], [2, 3], [len(cache) - 1]]
    seen = []
    with pytest.raises(CacheError, match=rf"{last.name}: truncated"):
        for batch in cache.batches(parts, ahead=3):
            seen.append(batch.indices.tolist())
    assert seen == [[0, 1], [2, 3]]  # the batches before it arrive first


def test_leaving_early_stops_the_reading():
    made = []

    class Item:
        def __init__(self, k):
            made.append(k)

        def to(self, device, non_blocking=False):
            return self

    gen = prefetched(Item, range(1000), CPU, ahead=3, workers=1)
    assert isinstance(next(gen), Item)
    gen.close()
    assert len(made) <= 5  # the one used, the ones queued; not the other 995


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pinned memory, side stream)")
def test_host_mode_on_cuda_pins_and_copies(cache_dir):
    cache = open_cache(cache_dir, mode="host", device="cuda", progress=False)
    assert cache.batch([0, 1]).audio.is_pinned()
    reference = _epoch(open_cache(cache_dir, mode="host", progress=False), ahead=0)
    got = _epoch(cache, ahead=3)
    for a, b in zip(got, reference, strict=True):
        assert a.audio.device.type == "cuda" and torch.equal(a.audio.cpu(), b.audio)
