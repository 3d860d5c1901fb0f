"""ksr.fuse attention: one training step (forward, backward, SGD momentum step) of the plain path
(the public code's operations) against the fast path, at the public implementation's small
configuration (dims 64/128, FFN 32/64, batch 32) and its default one (dims 512/1024, batch 4).

Goals (issue 3), on 2 CPU cores: fast step >= 2x the plain one at the small configuration and
>= 1.2x at the default one; peak memory >= 3x lower at the small configuration.

Method. Every measurement runs in a fresh subprocess (this file with ``--child``): build the
model, one warm-up step, then timed steps; the median is reported. Variants are interleaved
round by round so that a change in the machine's load hits them alike; the load average is
recorded before and after each child. Peak memory: the child resets the kernel's high-water mark
(``/proc/self/clear_refs``) just before the first step and reads ``VmHWM`` after the last one;
the table gives that peak minus the resident size before the step (what the steps add on top of
model, optimizer state and inputs). FLOPs: ``FlopCounterMode`` on one plain forward of one
utterance; a step counts 3x that. The machine's matmul rate: a 2048^3 float32 matmul.
If ``KSR_OFFICIAL_CODE`` names a folder holding the public implementation's ``model/`` package,
the public model itself is timed too, in the same rounds.
With a GPU, ``gpu_section`` also times bf16/fp16 autocast and ``torch.compile`` variants.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TA, TT = 460, 20
CONFIGS = {
    # name: (ModelConfig changes, batch)
    "small": (dict(audio_dim=64, text_dim=128, audio_ffn_dim=32, text_ffn_dim=64), 32),
    "default": ({}, 4),
}
GOALS = {"small": {"speed": 2.0, "memory": 3.0}, "default": {"speed": 1.2}}


# --- what a child measures ----------------------------------------------------------------------
def build_model(variant: str, changes: dict) -> torch.nn.Module:
    if variant == "public":
        from ksr.fuse import ModelConfig

        sys.path.insert(0, os.environ["KSR_OFFICIAL_CODE"])
        from model.KS_transformer_model import KS_transformer_model

        cfg = ModelConfig(**changes)
        return KS_transformer_model(
            input_dim=[cfg.audio_dim, cfg.text_dim],
            ffn_embed_dim=[cfg.audio_ffn_dim, cfg.text_ffn_dim],
            num_layers=list(cfg.num_layers),
            num_heads=cfg.num_heads,
            num_classes=cfg.num_classes,
        )
    from ksr.fuse import KSTransformer, ModelConfig

    return KSTransformer(ModelConfig(attention_impl=variant, **changes))


def make_batch(changes: dict, batch: int, seed: int = 1):
    """Padded random features; the first item is full length, the others 1/4 to full."""
    from ksr.fuse import ModelConfig

    cfg = ModelConfig(**changes)
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, TA, cfg.audio_dim, generator=g)
    text = torch.randn(batch, TT, cfg.text_dim, generator=g)
    a_len = torch.randint(TA // 4, TA + 1, (batch,), generator=g)
    t_len = torch.randint(TT // 4, TT + 1, (batch,), generator=g)
    a_len[0], t_len[0] = TA, TT
    am = torch.arange(TA)[None] >= a_len[:, None]
    tm = torch.arange(TT)[None] >= t_len[:, None]
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    return audio.masked_fill(am[..., None], 0.0), text.masked_fill(tm[..., None], 0.0), am, tm, labels


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def child(variant: str, config: str, steps: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    changes, batch = CONFIGS[config]
    torch.manual_seed(0)
    model = build_model(variant, changes).train()
    opt = torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9)
    audio, text, am, tm, labels = make_batch(changes, batch)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(audio, text, am, tm), labels)
        loss.backward()
        opt.step()

    rss_before = rss_kib("VmRSS")
    exact_peak = reset_peak_rss()
    load_before = os.getloadavg()[0]
    times, cpu = [], []
    for i in range(steps + 1):  # the first one warms up (and allocates momentum buffers)
        w, c = time.perf_counter(), time.process_time()
        step()
        if i:
            times.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
    peak = rss_kib("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shares = time_shares(step) if variant == "fast" else {}
    return dict(
        variant=variant,
        config=config,
        batch=batch,
        times=times,
        cpu=cpu,
        rss_before_mib=rss_before / 1024,
        peak_mib=peak / 1024,
        step_mib=(peak - rss_before) / 1024,
        exact_peak=exact_peak,
        load=[load_before, os.getloadavg()[0]],
        threads=torch.get_num_threads(),
        shares=shares,
    )


# Profiler op names -> the part of the step they belong to (self CPU time; the rest is "other").
PARTS = {
    "linear layers (mm, addmm)": ("aten::mm", "aten::addmm"),
    "attention (chunked, fwd + bwd)": ("ChunkedAttention", "ChunkedAttentionBackward"),
    "dropout outside attention (bernoulli_)": ("aten::bernoulli_",),
}


def time_shares(step) -> dict[str, float]:
    """Where one more step's time goes, as fractions of the profiled self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {
        part: sum(e.self_cpu_time_total for e in events if e.key in names) / total for part, names in PARTS.items()
    }
    shares["other (norms, activations, copies, optimizer)"] = 1.0 - sum(shares.values())
    return shares


def run_child(variant: str, config: str, steps: int, threads: int | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, config, "--steps", str(steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --- machine facts --------------------------------------------------------------------------------
def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def forward_gflop_per_utterance(config: str) -> float:
    """FLOPs of one plain forward of one full-length utterance, as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    changes, _ = CONFIGS[config]
    model = build_model("plain", changes).eval()
    audio, text, am, tm, _ = make_batch(changes, 1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(audio, text, am, tm)
    return counter.get_total_flops() / 1e9


# --- the report -----------------------------------------------------------------------------------
def summarise(results: list[dict], gflop: dict, peak_rate: float) -> list[dict]:
    rows = []
    for config in CONFIGS:
        for variant in ("public", "plain", "fast"):
            runs = [r for r in results if r["config"] == config and r["variant"] == variant]
            if not runs:
                continue
            times = [t for r in runs for t in r["times"]]
            step = statistics.median(times)
            batch = runs[0]["batch"]
            rate = 3 * gflop[config] * batch / step
            rows.append(
                dict(
                    config=config,
                    variant=variant,
                    batch=batch,
                    step_s=step,
                    min_s=min(times),
                    n=len(times),
                    cpu_s=statistics.median([c for r in runs for c in r["cpu"]]),
                    utt_per_s=batch / step,
                    gflops=rate,
                    of_peak=rate / peak_rate,
                    step_mib=statistics.median(r["step_mib"] for r in runs),
                    peak_mib=statistics.median(r["peak_mib"] for r in runs),
                    load=(min(r["load"][0] for r in runs), max(r["load"][1] for r in runs)),
                )
            )
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    lines = []
    for config, goal in GOALS.items():
        by = {r["variant"]: r for r in rows if r["config"] == config}
        if "fast" not in by:
            continue
        for base in ("public", "plain"):
            if base not in by:
                continue
            speed = by[base]["step_s"] / by["fast"]["step_s"]
            line = (
                f"- {config}: fast vs {base}: {speed:.2f}x faster (goal {goal['speed']}x: "
                f"{'met' if speed >= goal['speed'] else 'NOT met'})"
            )
            if "memory" in goal:
                mem = by[base]["step_mib"] / by["fast"]["step_mib"]
                line += (
                    f"; {mem:.1f}x less step memory (goal {goal['memory']}x: "
                    f"{'met' if mem >= goal['memory'] else 'NOT met'})"
                )
            lines.append(line)
    return lines


def where_time_goes(results: list[dict], rows: list[dict]) -> str:
    """The fast step's profile per configuration, and the speed-up bound it implies: linear
    layers do the same work on every path, so even free attention cannot beat
    baseline / (fast step x (1 - attention share))."""
    lines = [
        "Where the fast step's time goes (torch.profiler, self CPU time of one extra step, median over runs):",
        "",
        "| config | " + " | ".join(PARTS) + " | other | bound on speed-up with free attention |",
        "|---" * (len(PARTS) + 3) + "|",
    ]
    attention = list(PARTS)[1]
    for config in CONFIGS:
        runs = [r for r in results if r["config"] == config and r.get("shares")]
        if not runs:
            continue
        share = {k: statistics.median(r["shares"][k] for r in runs) for k in runs[0]["shares"]}
        by = {r["variant"]: r for r in rows if r["config"] == config}
        base = by.get("public", by.get("plain"))
        bound = base["step_s"] / (by["fast"]["step_s"] * (1 - share[attention]))
        lines.append(
            f"| {config} | "
            + " | ".join(f"{100 * v:.0f}%" for v in share.values())
            + f" | {bound:.2f}x vs {base['variant']} |"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = (
        "| config | variant | batch | step s (median, min, n) | CPU s | utt/s | GFLOP/s | of matmul peak "
        "| step memory MiB | process peak MiB | load avg |\n" + "|---" * 11 + "|\n"
    )
    body = "".join(
        f"| {r['config']} | {r['variant']} | {r['batch']} | {r['step_s']:.2f} ({r['min_s']:.2f}, {r['n']}) "
        f"| {r['cpu_s']:.2f} | {r['utt_per_s']:.2f} | {r['gflops']:.0f} | {100 * r['of_peak']:.0f}% "
        f"| {r['step_mib']:.0f} | {r['peak_mib']:.0f} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |\n"
        for r in rows
    )
    return head + body


def run(quick: bool = False, threads: int | None = None, configs=None) -> str:
    configs = list(configs or CONFIGS)
    official = os.environ.get("KSR_OFFICIAL_CODE")
    have_public = bool(official) and os.path.isdir(os.path.join(official, "model"))
    variants = (["public"] if have_public else []) + ["plain", "fast"]
    rounds, steps = (1, 1) if quick else (3, 2)
    if threads:
        torch.set_num_threads(threads)
    peak_rate = matmul_gflops()
    gflop = {c: forward_gflop_per_utterance(c) for c in configs}
    results = []
    for r in range(rounds):
        for config in configs:
            for variant in variants:
                res = run_child(variant, config, steps, threads)
                print(
                    f"  round {r + 1}: {config} {variant}: {statistics.median(res['times']):.2f} s/step, "
                    f"+{res['step_mib']:.0f} MiB, load {res['load'][0]:.1f}",
                    flush=True,
                )
                results.append(res)
    rows = summarise(results, gflop, peak_rate)
    out = ["## Attention: one training step, plain vs fast (issue 3)", ""]
    out.append(
        f"- float32 matmul rate of this machine (2048^3, {torch.get_num_threads()} threads): {peak_rate:.0f} GFLOP/s"
    )
    for c in configs:
        out.append(
            f"- forward FLOPs per utterance ({c}, FlopCounterMode, plain path): {gflop[c]:.2f} GFLOP; a step counts 3x"
        )
    out.append(
        f"- public implementation: {'timed from ' + official if have_public else 'not available (set KSR_OFFICIAL_CODE to a folder holding its model/ package)'}"
    )
    out.append(
        f"- {rounds} rounds x {steps} timed steps per variant after one warm-up step, each variant in "
        f"its own fresh process, variants interleaved; step memory = peak RSS during the steps minus "
        f"RSS before them"
    )
    out += ["", table(rows), *verdicts(rows), "", where_time_goes(results, rows)]
    if torch.cuda.is_available():
        out += ["", gpu_section(quick)]
    else:
        out += ["", "GPU variants (autocast bf16/fp16, torch.compile): skipped, no GPU on this machine."]
    return "\n".join(out)


# --- GPU variants -------------------------------------------------------------------------------
def gpu_step_timing(
    config: str,
    impl: str,
    amp: torch.dtype | None,
    compiled: bool,
    steps: int,
    device: str = "cuda",
    batch: int | None = None,
) -> dict:
    """Time a training step on ``device`` under optional autocast and torch.compile."""
    changes, default_batch = CONFIGS[config]
    batch = batch or default_batch
    torch.manual_seed(0)
    model = build_model(impl, changes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9)
    audio, text, am, tm, labels = (t.to(device) for t in make_batch(changes, batch))
    forward = torch.compile(model) if compiled else model
    scaler = torch.amp.GradScaler(device, enabled=amp == torch.float16)
    is_cuda = device.startswith("cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(forward(audio, text, am, tm), labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3 if compiled else 1):
        step()
    if is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        if is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if is_cuda else float("nan")
    del step, model  # the closure holds the model and the optimiser
    if is_cuda:
        torch.cuda.empty_cache()
    return dict(step_s=statistics.median(times), batch=batch, peak_mib=peak)


GPU_VARIANTS = [
    # label, impl, autocast dtype, torch.compile
    ("plain fp32", "plain", None, False),
    ("fast fp32", "fast", None, False),
    ("fast bf16 autocast", "fast", torch.bfloat16, False),
    ("fast fp16 autocast", "fast", torch.float16, False),
    ("plain bf16 autocast + compile", "plain", torch.bfloat16, True),
    ("fast fp32 + compile", "fast", None, True),
    ("fast bf16 autocast + compile", "fast", torch.bfloat16, True),
]


def gpu_section(quick: bool, device: str = "cuda") -> str:
    steps = 3 if quick else 10
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    lines = [
        f"### GPU: {name}",
        "",
        "| config | variant | batch | step s | utt/s | peak allocated MiB |",
        "|---|---|---|---|---|---|",
    ]
    for config in CONFIGS:
        for label, impl, amp, compiled in GPU_VARIANTS:
            try:
                r = gpu_step_timing(config, impl, amp, compiled, steps, device)
            except Exception as exc:  # a variant that fails (e.g. no compiler) is reported, not fatal
                lines.append(f"| {config} | {label} | | failed: {type(exc).__name__}: {str(exc)[:80]} | | |")
                continue
            lines.append(
                f"| {config} | {label} | {r['batch']} | {r['step_s']:.4f} | "
                f"{r['batch'] / r['step_s']:.1f} | {r['peak_mib']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "CONFIG"), help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default=None, help="also write the section to this Markdown file")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.threads)))
        return
    text = run(args.quick, args.threads, args.configs.split(","))
    print(text)
    if args.out:
        sys.path.insert(0, HERE)
        from run import machine_summary

        with open(args.out, "w") as f:
            f.write("# ksr benchmark results: attention\n\n" + machine_summary() + "\n" + text + "\n")


if __name__ == "__main__":
    main()
