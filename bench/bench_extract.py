"""Extraction throughput: batched vs one utterance at a time, and (on a GPU) hours of audio/min.

Every figure is a full ``extract_corpus`` run (read, mix, resample, encode both modalities,
write the cache) on a generated corpus whose durations follow IEMOCAP's shape (log-normal,
median 3.5 s, 0.6 to 30 s; mean about 4.2 s). Encoders have random weights (no downloads):
the cost of a forward pass does not depend on the weights' values.

- CPU: the same encoder run one utterance at a time (the naive loop: batches of one, no
  read-ahead), batched at several batch sizes, with and without the reader thread, at 1 torch
  thread and at the default (one per core). Two audio encoders: a wav2vec 2.0 base-size model
  (95 M parameters, layer-norm front end, so it batches with an attention mask) and
  ``tiny-audio`` (where per-call overhead dominates). Text: ``tiny-text``.
- GPU (when present): wav2vec 2.0 large (lv60 config, 317 M) + RoBERTa large (355 M), float16:
  one at a time, and batched at 60 / 120 / 300 s with and without read-ahead: hours of audio
  per minute.

Wall times on a shared machine are noisy: each configuration runs ``repeats`` times,
interleaved, and the best is kept; CPU time (all threads of this process) is shown too.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = (
    "i you we they it this that what why no yes well really never always so very just "
    "happy sad angry tired late home work time day night tomorrow again together told "
    "believe wonderful terrible leave stay listen please sorry thanks okay sure"
).split()


def make_corpus(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` noise utterances with IEMOCAP-like durations and transcripts; the manifest path."""
    import soundfile as sf

    from ksr.extract.corpora.manifest import Utterance, write_manifest

    rng = np.random.default_rng(seed)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        seconds = float(np.clip(rng.lognormal(np.log(3.5), 0.6), 0.6, 30.0))
        wav = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        path = folder / "wav" / f"u{i:05d}.wav"
        sf.write(path, wav, 16000, subtype="PCM_16")
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 25)))).capitalize() + "."
        rows.append(
            Utterance(
                id=f"u{i:05d}",
                audio=path,
                text=text,
                label="abcd"[i % 4],
                speaker=f"s{i % 10}",
                session=1 + i % 5,
                gender="FM"[i % 2],
            )
        )
    return write_manifest(folder / "manifest.csv", rows)


def save_wav2vec2(folder: Path, size: str) -> Path:
    """A randomly initialised wav2vec 2.0 of ``base`` or ``large`` (lv60) size, layer-norm front
    end (the configuration that batches with an attention mask)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    if (folder / "config.json").is_file():
        return folder
    kw = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, mask_time_prob=0.0)
    if size == "large":
        kw.update(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**kw)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return folder


def save_roberta_large(folder: Path, tokenizer_from: Path) -> Path:
    """A randomly initialised RoBERTa large (with the tiny BPE tokenizer: tokenisation is not
    what is timed, the 24 x 1024 model is)."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    if (folder / "config.json").is_file():
        return folder
    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(0)
    RobertaModel(
        RobertaConfig(
            vocab_size=len(tok),
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            max_position_embeddings=514,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(manifest: Path, work: Path, audio, text, **kw) -> tuple[float, float, object]:
    """One extraction into a fresh cache: (wall s, CPU s, summary)."""
    from ksr.extract.pipeline import extract_corpus

    out = work / "cache"
    shutil.rmtree(out, ignore_errors=True)
    c0, t0 = _cpu_seconds(), time.perf_counter()
    summary = extract_corpus(manifest, out, audio, text, progress=False, classes=list("abcd"), **kw)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    assert summary.extracted == summary.total, summary.format()
    return wall, cpu, summary


ONE = dict(batch_seconds=1e-3, prefetch=0)  # every batch holds one utterance


def _cpu_table(
    label: str, manifest: Path, work: Path, audio, text, repeats: int, configs: dict[str, tuple[int, dict]]
) -> list[str]:
    """``configs``: name -> (torch threads, extract_corpus options); the first is the baseline."""
    import torch

    threads = torch.get_num_threads()
    best: dict[str, tuple[float, float, object]] = {}
    audio.encode([np.zeros(16000, np.float32)] * 2)  # warm-up: first-call costs
    text.encode(["Warm up.", "Warm up the text model."])
    try:
        for _ in range(repeats):
            for name, (n_threads, kw) in configs.items():
                torch.set_num_threads(n_threads)
                got = _timed(manifest, work, audio, text, **kw)
                if name not in best or got[0] < best[name][0]:
                    best[name] = got
    finally:
        torch.set_num_threads(threads)
    base_wall, base_cpu, _ = best[next(iter(configs))]
    lines = [
        f"**{label}**",
        "",
        "| configuration | torch threads | utt/s | s of audio / s | vs first (wall) | CPU s | vs first (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (wall, cpu, s) in best.items():
        lines.append(
            f"| {name} | {configs[name][0]} | {s.extracted / wall:.2f} | "
            f"{s.audio_seconds / wall:.1f} | {base_wall / wall:.2f}x | {cpu:.1f} | "
            f"{base_cpu / cpu:.2f}x |"
        )
    return lines + [""]


def run(quick: bool = False) -> str:
    import torch

    from ksr.extract.encoders import load_encoder
    from ksr.extract.encoders.tiny import ensure_tiny

    home = Path(os.environ.get("KSR_BENCH_DIR") or tempfile.mkdtemp(prefix="ksr-bench-extract-"))
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    repeats = 1 if quick else 3
    cores = torch.get_num_threads()
    out = [
        "## Extraction (`bench/bench_extract.py`)",
        "",
        "Full `extract_corpus` runs (read + resample + both encoders + cache writes) on "
        "generated noise with IEMOCAP-like durations (median 3.5 s); best of "
        f"{repeats} interleaved runs; CPU time counts every thread of the process. "
        '"one at a time" = batches of one utterance, no read-ahead (the naive loop).',
        "",
    ]

    text = load_encoder("tiny-text", device="cpu")
    n_base = 8 if quick else 16
    base_manifest = make_corpus(home / f"corpus{n_base}", n_base)
    base = load_encoder(f"hf:{save_wav2vec2(home / 'w2v2-base', 'base')}", modality="audio", device="cpu")
    out += _cpu_table(
        f"CPU, wav2vec 2.0 base-size (95 M, layer-norm front end) + tiny-text, {n_base} utterances",
        base_manifest,
        work,
        base,
        text,
        repeats,
        {
            "one at a time": (1, ONE),
            "batched 10 s, no read-ahead": (1, dict(batch_seconds=10, prefetch=0)),
            "batched 10 s + read-ahead (CPU default)": (1, dict(batch_seconds=10, prefetch=2)),
            "batched 30 s": (1, dict(batch_seconds=30, prefetch=0)),
            "batched 120 s (GPU default)": (1, dict(batch_seconds=120, prefetch=0)),
            f"one at a time, {cores} threads": (cores, ONE),
            f"batched 10 s, {cores} threads": (cores, dict(batch_seconds=10, prefetch=0)),
            f"batched 30 s, {cores} threads": (cores, dict(batch_seconds=30, prefetch=0)),
        },
    )
    del base
    n_tiny = 60 if quick else 200
    tiny_manifest = make_corpus(home / f"corpus{n_tiny}", n_tiny)
    tiny = load_encoder("tiny-audio", device="cpu")
    out += _cpu_table(
        f"CPU, tiny-audio + tiny-text (per-call overhead dominates), {n_tiny} utterances",
        tiny_manifest,
        work,
        tiny,
        text,
        repeats,
        {
            "one at a time": (cores, ONE),
            "batched 10 s, no read-ahead": (cores, dict(batch_seconds=10, prefetch=0)),
            "batched 30 s": (cores, dict(batch_seconds=30, prefetch=0)),
            "batched 30 s + read-ahead": (cores, dict(batch_seconds=30, prefetch=2)),
            "one at a time, 1 thread": (1, ONE),
            "batched 30 s, 1 thread": (1, dict(batch_seconds=30, prefetch=0)),
        },
    )

    if torch.cuda.is_available():
        out += _gpu_section(home, work, ensure_tiny("tiny-text"), quick)
    else:
        out += [
            "GPU: none on this machine (the wav2vec 2.0 large + RoBERTa large rate is "
            "measured where `torch.cuda.is_available()`).",
            "",
        ]
    if not os.environ.get("KSR_BENCH_DIR"):
        shutil.rmtree(home, ignore_errors=True)
    return "\n".join(out)


def _gpu_section(home: Path, work: Path, tiny_text: Path, quick: bool) -> list[str]:
    import torch

    from ksr.extract.encoders import load_encoder

    n = 200 if quick else 1000
    manifest = make_corpus(home / f"corpus{n}", n)
    audio = load_encoder(
        f"hf:{save_wav2vec2(home / 'w2v2-large', 'large')}", modality="audio", device="cuda", dtype=torch.float16
    )
    text = load_encoder(
        f"hf:{save_roberta_large(home / 'roberta-large', tiny_text)}",
        modality="text",
        device="cuda",
        dtype=torch.float16,
    )
    lines = [
        f"**GPU ({torch.cuda.get_device_name(0)}), wav2vec 2.0 large + RoBERTa large, float16, {n} utterances**",
        "",
        "| batch (s of audio) | read-ahead | utt/s | hours of audio / min | peak GPU memory |",
        "|---|---|---|---|---|",
    ]
    _timed(manifest, work, audio, text)  # warm-up (cuDNN autotune, allocator)
    for seconds, prefetch in ((1e-3, 0), (60, 2), (120, 0), (120, 2), (300, 2)):
        torch.cuda.reset_peak_memory_stats()
        wall, _, s = _timed(manifest, work, audio, text, batch_seconds=seconds, prefetch=prefetch)
        name = "one at a time" if seconds < 1 else f"{seconds:g}"
        lines.append(
            f"| {name} | {prefetch} | {s.extracted / wall:.1f} | "
            f"{s.audio_seconds / 3600 / (wall / 60):.2f} | "
            f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |"
        )
    return lines + [""]


if __name__ == "__main__":
    print(run(quick=True))
