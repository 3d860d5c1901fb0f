"""Build the study's caches with ksr's own pipeline (as `ksr demo` does).

python make_caches.py            -> caches/demo (per_speaker=32, audio cut at 230 frames, as `make demo`)
                                    caches/demo460 (same corpus, 460 frames)
                                    caches/big (per_speaker=128, 230 frames)
"""
import os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
from pathlib import Path
from ksr.extract.corpora.demo import make_demo_corpus
from ksr.extract.pipeline import extract_corpus

HERE = Path(__file__).resolve().parent
which = sys.argv[1:] or ["demo", "demo460", "big"]
for name in which:
    per = 128 if name.startswith("big") else 32
    data = HERE / "data" / ("big" if per == 128 else "demo")
    if not (data / "manifest.csv").is_file():
        t = time.perf_counter(); make_demo_corpus(data, seed=0, per_speaker=per)
        print(f"corpus {data}: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    s = extract_corpus(data / "manifest.csv", HERE / "caches" / name, "tiny-audio", "tiny-text", corpus="demo",
                       max_audio_len=460 if name.endswith("460") else 230, progress=False)
    print(s.format()); print(f"extract {name}: {time.perf_counter() - t:.1f} s")
