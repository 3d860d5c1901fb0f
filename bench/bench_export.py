"""One utterance through the exported ONNX model in onnxruntime against the same model in torch.

``ksr export`` writes the model's plain attention path (fuse/export.py); torch here runs the
model as ``ksr predict`` does (its fast attention path, eval mode, ``torch.inference_mode``).
Both get one utterance (batch 1) of 460 frames and 20 tokens, 300 and 12 of them true (the rest
padding, as a cache row), at the public implementation's default size (dims 512/1024, FFN
256/512, layers 5,3,2, 8 heads) and its small one (dims 64/128, FFN 32/64), random weights
(timing does not depend on them). Per configuration and thread count: the model is exported to a
temporary file, an onnxruntime session opened (CPUExecutionProvider, ``intra_op_num_threads`` =
the thread count, its other options default) and torch set to the same thread count; after
warm-up runs the two runtimes alternate run by run, so that a change in the machine's load hits
both alike; the table gives the median, minimum and 90th percentile of the wall time of each.
The 1-minute load average before and after is recorded: the development machine is shared.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the ksr command sets it (bench/results.md, threads)

import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

CONFIGS = {
    "default": {},
    "small": dict(audio_dim=64, text_dim=128, audio_ffn_dim=32, text_ffn_dim=64),
}
AUDIO_TRUE, TEXT_TRUE = 300, 12


def utterance(cfg, ta: int, tt: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    audio_mask = torch.arange(ta)[None, :] >= AUDIO_TRUE
    text_mask = torch.arange(tt)[None, :] >= TEXT_TRUE
    return {
        "audio": torch.randn(1, ta, cfg.audio_dim, generator=g).masked_fill(audio_mask[..., None], 0.0),
        "text": torch.randn(1, tt, cfg.text_dim, generator=g).masked_fill(text_mask[..., None], 0.0),
        "audio_padding_mask": audio_mask,
        "text_padding_mask": text_mask,
    }


def measure(name: str, changes: dict, threads: int, runs: int, warmup: int) -> dict:
    import onnxruntime as ort

    from ksr.cache.synthetic import synthetic_meta
    from ksr.fuse import KSTransformer, ModelConfig
    from ksr.fuse.report.export import write_onnx

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = ModelConfig(**changes)
    model = KSTransformer(cfg).eval()
    meta = synthetic_meta(audio_dim=cfg.audio_dim, text_dim=cfg.text_dim)
    inputs = utterance(cfg, meta.max_audio_len, meta.max_text_len)
    feeds = {k: v.numpy() for k, v in inputs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        began = time.perf_counter()
        exported = write_onnx(model, meta, path, {"file": f"bench {name}"})
        export_s = time.perf_counter() - began
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run_torch():
            with torch.inference_mode():
                return model(**inputs).numpy()

        def run_ort():
            return session.run(["logits"], feeds)[0]

        diff = float(np.abs(run_torch() - run_ort()).max())
        for _ in range(warmup):
            run_torch(), run_ort()
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        load = [os.getloadavg()[0]]
        for _ in range(runs):
            for runtime, call in (("torch", run_torch), ("onnxruntime", run_ort)):
                t = time.perf_counter()
                call()
                times[runtime].append(time.perf_counter() - t)
        load.append(os.getloadavg()[0])
    return {"times": times, "export_s": export_s, "mib": exported.nbytes / 2**20, "diff": diff, "load": load}


def run(quick: bool = False) -> str:
    runs, warmup = (10, 2) if quick else (50, 5)
    thread_counts = sorted({1, torch.get_num_threads()})
    lines = [
        "## Export: one utterance in onnxruntime vs torch (issue 16)",
        "",
        f"- {warmup} warm-up runs, then {runs} timed runs per runtime, alternating; batch 1, 460 frames "
        f"({AUDIO_TRUE} true) and 20 tokens ({TEXT_TRUE} true); random weights; "
        "`OMP_WAIT_POLICY=PASSIVE` (as the ksr command sets it)",
        "- torch: the model as `ksr predict` runs it (fast attention path, eval, inference_mode); "
        "onnxruntime: the file `ksr export` writes (plain path), CPUExecutionProvider, intra-op threads as given",
        "",
        "| model | threads | runtime | ms per utterance: median | min | p90 | ONNX file MiB | export s "
        "| max abs logit diff | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, changes in CONFIGS.items():
        for threads in thread_counts:
            print(f"  {name}, {threads} thread(s)", flush=True)
            r = measure(name, changes, threads, runs, warmup)
            medians = {}
            for runtime, t in r["times"].items():
                ms = sorted(1000 * x for x in t)
                medians[runtime] = statistics.median(ms)
                p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
                lines.append(
                    f"| {name} | {threads} | {runtime} | {medians[runtime]:.1f} | {ms[0]:.1f} | {p90:.1f} "
                    f"| {r['mib']:.1f} | {r['export_s']:.1f} | {r['diff']:.1e} "
                    f"| {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
                )
            notes.append(
                f"- {name}, {threads} thread(s): onnxruntime / torch median = "
                f"{medians['onnxruntime'] / medians['torch']:.2f}"
            )
    return "\n".join(lines + [""] + notes) + "\n"


if __name__ == "__main__":
    print(run(quick=True))
