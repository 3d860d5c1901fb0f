"""caches/fb4tiny: study fbank (80 log-mel, pooled x4 = 25 frames/s, 110 frames) + tiny-text (20 tokens).
python make_mixed_cache.py [NAME POOL FRAMES PER_SPEAKER]"""
import os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
from pathlib import Path
from ksr.extract.corpora.demo import make_demo_corpus
from ksr.extract.pipeline import extract_corpus
from study_encoders import Fbank
HERE = Path(__file__).resolve().parent
name = sys.argv[1] if len(sys.argv) > 1 else "fb4tiny"
pool = int(sys.argv[2]) if len(sys.argv) > 2 else 4
frames = int(sys.argv[3]) if len(sys.argv) > 3 else 110
per = int(sys.argv[4]) if len(sys.argv) > 4 else 32
t0 = time.perf_counter()
data = HERE / "data" / {32: "demo", 128: "big"}.get(per, f"demo{per}")
if not (data / "manifest.csv").is_file():
    make_demo_corpus(data, seed=0, per_speaker=per)
t1 = time.perf_counter()
s = extract_corpus(data / "manifest.csv", HERE / "caches" / name, Fbank(80, pool), "tiny-text", corpus="demo",
                   max_audio_len=frames, progress=False)
print(s.format()); print(f"{name}: corpus {t1 - t0:.1f} s, extraction {time.perf_counter() - t1:.1f} s")
