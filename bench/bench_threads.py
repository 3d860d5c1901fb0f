"""Training threads: torch's intra-op threads and OpenMP's waiting policy, on an idle machine and on
a busy one (a second CPU-bound process running), for the demo's model and the default (paper-size)
model. ``bench/run.py --only threads``.

Each setting runs in a fresh process (this file with ``--child``), because OpenMP reads its
environment once, when torch loads: ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` are set before the
child starts. The child times what one training step of ``ksr train`` does: the model's forward on
a padded batch, cross-entropy, backward, an SGD step; after one warm-up step, the median of the
timed steps. The busy machine is one extra process spinning on float32 matrix products (one
thread), started before and stopped after the child; the attention worker pool of
``fuse/fast_attention.py`` follows ``torch.get_num_threads()`` and so is part of every setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {
    # name: (ModelConfig changes, audio dim, text dim, audio frames, batch)
    "demo": (dict(num_layers=(1, 1, 1), num_heads=4, audio_ffn_dim=64, text_ffn_dim=64), 32, 32, 230, 16),
    "default": ({}, 512, 1024, 460, 2),
}
SETTINGS = {
    # name: environment of the child (None: left unset, torch's default)
    "2 threads, OpenMP default waiting": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    # libgomp (torch's OpenMP on Linux) spins this many times before it sleeps (its default: 300,000)
    "2 threads, GOMP_SPINCOUNT=1000": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"},
    "1 thread (OMP_NUM_THREADS=1)": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
}
BUSY_LOOP = (
    "import os; os.environ['OMP_NUM_THREADS']='1'\n"
    "import numpy as np\n"
    "a = np.random.rand(400, 400).astype(np.float32)\n"
    "while True: a = (a @ a) / 400\n"
)


def child(model: str, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from ksr.fuse import ModelConfig
    from ksr.fuse.model.model import KSTransformer

    changes, audio_dim, text_dim, frames, batch = MODELS[model]
    torch.manual_seed(0)
    net = KSTransformer(ModelConfig(audio_dim=audio_dim, text_dim=text_dim, **changes))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    audio, text = torch.randn(batch, frames, audio_dim), torch.randn(batch, 20, text_dim)
    lengths = torch.linspace(frames // 3, frames, batch).long()
    audio_mask = torch.arange(frames)[None, :] >= lengths[:, None]  # True = padded
    text_mask = torch.arange(20)[None, :] >= torch.linspace(5, 20, batch).long()[:, None]
    labels = torch.arange(batch) % 4
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        loss = F.cross_entropy(net(audio, text, audio_mask, text_mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t)
    return dict(step_s=statistics.median(times), threads=torch.get_num_threads())


def measure(model: str, env_changes: dict, busy: bool, steps: int, repeats: int = 3) -> float:
    """The median over ``repeats`` fresh processes of each one's median step time."""
    return statistics.median(one_process(model, env_changes, busy, steps)["step_s"] for _ in range(repeats))


def one_process(model: str, env_changes: dict, busy: bool, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for key, value in env_changes.items():
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    spinner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        if spinner is not None:
            time.sleep(1.0)  # let it reach its loop
        out = subprocess.run(
            [sys.executable, __file__, "--child", model, "--steps", str(steps)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool) -> str:
    steps, repeats = (2, 1) if quick else (3, 3)
    lines = [
        "## threads",
        "",
        "Median wall time of one training step (forward, cross-entropy, backward, SGD) per setting,",
        f"{steps} timed steps after a warm-up in a fresh process, the median of {repeats} such processes; busy = one other process",
        "running float32 matrix products on one thread. Models: demo = layers 1,1,1, 4 heads, FFN 64,",
        f"dims 32, 230 frames, batch {MODELS['demo'][4]}; default = `ModelConfig()` (dims 512 / 1024,",
        f"460 frames), batch {MODELS['default'][4]}.",
        "",
        "| model | setting | idle: s / step | busy: s / step |",
        "|---|---|---|---|",
    ]
    for model in MODELS:
        for name, env in SETTINGS.items():
            idle = measure(model, env, busy=False, steps=steps, repeats=repeats)
            busy = measure(model, env, busy=True, steps=steps, repeats=repeats)
            lines.append(f"| {model} | {name} | {idle:.3f} | {busy:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
    else:
        print(run(args.quick))
