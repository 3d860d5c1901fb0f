"""What ``--max-audio-seconds`` saves: encoder time on IEMOCAP-like lengths, whole vs cut.

Durations follow IEMOCAP's shape as in ``bench_extract.py`` (log-normal, median 3.5 s, 0.6 to
30 s), taken at the ``n`` quantiles ``(i + 0.5) / n`` rather than drawn, so that a small set
keeps the distribution's tail; the same set is timed whole and cut to each ``--cuts`` value.
Encoders have random weights (the cost of a forward pass does not depend on their values):
wav2vec 2.0 base size (95 M, the CPU bench's model), emotion2vec base settings (93 M) and
fbank. One utterance at a time, one torch thread, CPU time of this process (the machine is
shared: wall time swings with the neighbours' load, CPU time much less); configurations
interleaved, ``repeats`` rounds, best kept.

    OMP_NUM_THREADS=1 .venv/bin/python bench/cut_speed.py [--n 40] [--cuts 5,10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def durations(n: int) -> list[float]:
    """IEMOCAP-like durations at the n quantiles of log-normal(ln 3.5 s, 0.6), within 0.6..30."""
    from statistics import NormalDist

    z = [NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)]
    return [float(np.clip(3.5 * np.exp(0.6 * q), 0.6, 30.0)) for q in z]


def cpu_seconds(enc, wavs) -> float:
    start = time.process_time()
    for w in wavs:
        enc.encode([w])
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--cuts", default="5,10")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cuts = [float(c) for c in args.cuts.split(",")]
    torch.set_grad_enabled(False)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_extract import save_wav2vec2
    from cut_drift import write_emotion2vec_base

    from ksr.extract.encoders import load_encoder
    from ksr.extract.encoders.hf import quiet_transformers

    secs = durations(args.n)
    rng = np.random.default_rng(1)
    wavs = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in secs]
    kept = {c: sum(min(s, c) for s in secs) for c in cuts}
    print(
        f"{args.n} utterances, mean {np.mean(secs):.2f} s, max {max(secs):.1f} s, "
        f"{sum(secs):.0f} s in all ("
        + ", ".join(f"{kept[c]:.0f} s after a {c:g} s cut" for c in cuts)
        + f"); torch threads {torch.get_num_threads()}; CPU seconds\n"
    )
    print("| encoder | whole | " + " | ".join(f"cut {c:g} s | speed-up" for c in cuts) + " |")
    print("|---|---|" + "---|---|" * len(cuts))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with quiet_transformers():
            specs = [
                ("fbank", "fbank"),
                ("wav2vec 2.0 base size", f"hf:{save_wav2vec2(tmp / 'w2v2', 'base')}"),
                ("emotion2vec base settings", write_emotion2vec_base(tmp / "e2v")),
            ]
        for what, spec in specs:
            enc = load_encoder(spec, device="cpu")
            enc.encode([wavs[0]])  # warm-up
            sets = [wavs] + [[w[: int(c * 16000)] for w in wavs] for c in cuts]
            best = [float("inf")] * len(sets)
            for _ in range(args.repeats):
                for i, ws in enumerate(sets):
                    best[i] = min(best[i], cpu_seconds(enc, ws))
            row = f"| {what} | {best[0]:.2f} |"
            for t in best[1:]:
                row += f" {t:.2f} | {best[0] / t:.2f}x |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
