"""Training epochs as users run them: ``train_fold`` on an IEMOCAP-sized cache, timed per epoch,
extrapolated to a full run (5 folds x 120 epochs). ``bench/run.py --only gpu-train``.

What is timed is ksr's own loop, not a copy of it: ``ksr.fuse.train.training.train_fold`` on fold 1
(leave-one-session-out, validation selection, the ``paper`` recipe, batch 32, the default
``KSTransformer(ModelConfig())``, dims 512/1024) of a synthetic cache opened in memory (on the
GPU when there is one). One epoch is what ``train_fold`` does per epoch: shuffled batches from
``Cache.batch``, forward + cross-entropy + backward + SGD step, the validation pass (``infer``),
then ``best.pt``, ``last.pt``, ``history.json`` and ``state.pt`` written atomically. Epoch
times come from ``train_fold``'s ``on_epoch`` callback; the validation pass and the file writes
are timed by wrapping the functions ``train_fold`` calls (so the training part is the rest).

Variants, each in a fresh process (this file with ``--child``), after ``--warmup`` epochs:

- ``fp32``: ``amp=False``.
- ``bf16``: ``amp=True``, ``train_fold``'s bfloat16 autocast (it acts on CUDA only).
- ``bf16-compile``: ``amp=True`` and ``torch.compile``. ``train_fold`` has no compile option,
  so the child makes every ``KSTransformer`` compile itself in place (``nn.Module.compile()``
  at the end of ``__init__``) and then calls the unchanged ``train_fold``: the same loop, the
  same state-dict keys and checkpoints, the validation pass compiled too.

On a machine without a GPU only ``fp32`` runs (a small cache by default); the GPU variants are
reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
IEMOCAP_UTTERANCES = 5531  # the 4-class IEMOCAP set (excited merged into happy)
FOLDS, EPOCHS = 5, 120  # a full run of the paper's protocol and recipe
CPU_UTTERANCES = 24  # a default-size step of batch 32 takes about a minute on 2 shared CPU cores
FOLD, SEED = 1, 123
VAL_FRACTION = 0.1  # RunSpec's default
# An IEMOCAP-sized fold with equal sessions: 4 of 5 sessions, less the validation share.
FOLD_TRAIN = round(IEMOCAP_UTTERANCES * (FOLDS - 1) / FOLDS * (1 - VAL_FRACTION))
FOLD_VALID = round(IEMOCAP_UTTERANCES * (FOLDS - 1) / FOLDS * VAL_FRACTION)
VARIANTS = {
    # name: (amp, torch.compile, what it is)
    "fp32": (False, False, "float32"),
    "bf16": (True, False, "bf16 autocast"),
    "bf16-compile": (True, True, "bf16 autocast + torch.compile"),
}


# --- what a child measures ----------------------------------------------------------------------
def compile_every_model() -> None:
    """Make each KSTransformer built from now on compile its forward in place (this process only)."""
    from ksr.fuse.model.model import KSTransformer

    init = KSTransformer.__init__

    def compiling_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.compile()

    KSTransformer.__init__ = compiling_init


def time_calls(module, names: list[str], totals: dict[str, float], part: str) -> list[str]:
    """Wrap ``module.<name>`` so that its wall time adds to ``totals[part]``; returns the names
    found (a name the module no longer has is left out, and the breakdown says so)."""
    found = []
    for name in names:
        fn = getattr(module, name, None)
        if fn is None:
            continue

        def timed(*args, _fn=fn, **kwargs):
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                totals[part] += time.perf_counter() - t

        setattr(module, name, timed)
        found.append(name)
    return found


class CountRecompileLimits(logging.Handler):
    """Counts torch._dynamo's "hit config.recompile_limit" warnings (code it then runs eagerly)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "recompile_limit" in record.getMessage():
            self.hits += 1


def dynamo_summary(limits: CountRecompileLimits) -> dict:
    from torch._dynamo.utils import counters

    return dict(
        graphs=int(counters["stats"]["unique_graphs"]),
        graph_breaks=int(sum(counters["graph_break"].values())),
        break_reasons=len(counters["graph_break"]),
        recompile_limit_hits=limits.hits,
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_batches(cache, waited: list[float]) -> None:
    """Make ``cache.batches`` (training's and validation's source of batches) add the time spent
    waiting for each batch to ``waited[0]``: on a GPU, time it has no batch to compute (every
    step's ``loss.item()`` keeps the host within a step of the device)."""
    real = cache.batches

    def timed(*args, **kwargs):
        batches = real(*args, **kwargs)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            waited[0] += time.perf_counter() - t
            if batch is None:
                return
            yield batch

    cache.batches = timed


def child(
    variant: str, cache_dir: str, epochs: int, warmup: int, run_root: str | None, cache_mode: str = "memory"
) -> dict:
    import ksr.fuse.train.training as training
    from ksr.cache import open_cache
    from ksr.fuse import ModelConfig
    from ksr.fuse.train.recipes import recipe
    from ksr.fuse.train.runs import RunSpec, cache_split, model_config_for_cache

    amp, compiled, _ = VARIANTS[variant]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t = time.perf_counter()
    cache = open_cache(cache_dir, mode=cache_mode, device=device, progress=False)
    load_s = time.perf_counter() - t
    waited = [0.0]
    time_batches(cache, waited)
    spec = RunSpec(
        model=model_config_for_cache(cache, ModelConfig()),
        recipe=recipe("paper", epochs=warmup + epochs),
        cache_meta=cache.meta.to_dict(),
        cache_dir=str(cache_dir),
    )
    split = cache_split(cache, spec, FOLD, SEED)
    limits = CountRecompileLimits()
    if compiled:
        compile_every_model()
        logging.getLogger("torch._dynamo").addHandler(limits)
    totals = {"validation": 0.0, "writes": 0.0}
    wrapped = time_calls(training, ["infer"], totals, "validation")
    wrapped += time_calls(training, ["save_checkpoint", "atomic_save", "write_json"], totals, "writes")
    records = []
    mark = [time.perf_counter(), time.process_time()]

    def on_epoch(epoch: int, record: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        total, cpu = time.perf_counter() - mark[0], time.process_time() - mark[1]
        records.append(
            dict(
                epoch=epoch,
                seconds=total,
                cpu=cpu,
                validation=totals["validation"],
                writes=totals["writes"],
                train=total - totals["validation"] - totals["writes"],
                train_loss=record["train_loss"],
                data_wait=waited[0],
            )
        )
        waited[0] = 0.0
        print(f"    {variant} epoch {epoch}: {total:.2f} s, train loss {record['train_loss']:.4f}", file=sys.stderr)
        totals.update(validation=0.0, writes=0.0)
        mark[:] = [time.perf_counter(), time.process_time()]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="ksr-bench-train-run-", dir=run_root) as run_dir:
        training.train_fold(cache, spec, Path(run_dir), FOLD, SEED, device, amp=amp, progress=False, on_epoch=on_epoch)
        checkpoint_mib = sum(f.stat().st_size for f in Path(run_dir).rglob("*.pt")) / 2**20
    return dict(
        variant=variant,
        device=str(device),
        cache_mode=cache.mode,
        placement=cache.placement,
        amp_active=amp and device.type == "cuda",
        compiled=compiled,
        utterances=len(cache),
        dims=[spec.model.audio_dim, spec.model.text_dim],
        train=len(split.train),
        valid=len(split.valid),
        batch=spec.recipe.batch_size,
        load_s=load_s,
        epochs=records,
        warmup=warmup,
        wrapped=wrapped,
        checkpoint_mib=checkpoint_mib,
        peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        peak_rss_mib=peak_rss_mib(),
        threads=torch.get_num_threads(),
        matmul_precision=torch.get_float32_matmul_precision(),
        dynamo=dynamo_summary(limits) if compiled else None,
    )


def run_child(
    variant: str,
    cache_dir: Path,
    epochs: int,
    warmup: int,
    timeout: float | None,
    run_root: Path,
    cache_mode: str = "memory",
) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, str(cache_dir)]
    cmd += ["--epochs", str(epochs), "--warmup", str(warmup), "--run-root", str(run_root)]
    cmd += ["--cache-mode", cache_mode]
    # The child's progress (stderr) is shown as it comes; its last lines name a failure.
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        stopped: list[bool] = []
        timer = threading.Timer(timeout, lambda: (stopped.append(True), proc.kill())) if timeout else None
        if timer:
            timer.start()
        tail: list[str] = []
        try:
            for line in proc.stderr:
                print(line, end="", file=sys.stderr, flush=True)
                tail = (tail + [line.strip()])[-20:]
            out = proc.stdout.read()
        finally:
            if timer:
                timer.cancel()
    if proc.returncode:
        if stopped:
            raise RuntimeError(f"stopped after --variant-timeout {timeout:.0f} s")
        last = next((x for x in reversed(tail) if x), "")
        raise RuntimeError(f"exit status {proc.returncode}: {last}")
    return json.loads(out.strip().splitlines()[-1])


# --- the report -----------------------------------------------------------------------------------
def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def label(r: dict) -> str:
    """What a variant measured on this machine (autocast is a no-op on a CPU)."""
    if r["compiled"] and not r["amp_active"]:
        return "float32 + torch.compile (autocast is off on CPU)"
    if VARIANTS[r["variant"]][0] and not r["amp_active"]:
        return "float32 (autocast is off on CPU)"
    return VARIANTS[r["variant"]][2]


def summarise(r: dict) -> dict:
    timed = r["epochs"][r["warmup"] :]
    med = lambda key: statistics.median(e[key] for e in timed)
    epoch_s = med("seconds")
    row = dict(
        epoch_s=epoch_s,
        min_s=min(e["seconds"] for e in timed),
        cpu_s=med("cpu"),
        n=len(timed),
        train_s=med("train"),
        validation_s=med("validation"),
        writes_s=med("writes"),
        first_s=r["epochs"][0]["seconds"],
        data_wait_s=med("data_wait") if all("data_wait" in e for e in timed) else 0.0,
        full_run_s=epoch_s * EPOCHS * FOLDS,
    )
    # A small cache (the CPU default): training and validation scaled per utterance to an
    # IEMOCAP-sized fold, the file writes (a fixed cost per epoch) kept as measured.
    row["scaled_epoch_s"] = (
        row["train_s"] * FOLD_TRAIN / r["train"] + row["validation_s"] * FOLD_VALID / r["valid"] + row["writes_s"]
    )
    row["utt_per_s"] = r["train"] / row["train_s"]
    return row


def section(results: dict, device_name: str, epochs: int, warmup: int, cache_note: str) -> str:
    ok = [r for r in results.values() if isinstance(r, dict)]
    first = ok[0] if ok else None
    lines = ["## Training epochs: ksr's train_fold, fp32 / bf16 / bf16 + torch.compile (issue 13)", ""]
    lines.append(
        f"{cache_note} Device: {device_name}. Fold {FOLD} of leave-one-session-out, recipe `paper` "
        f"(SGD, batch 32), the default model (`ModelConfig()`: layers 5/3/2, 8 heads, fast attention) at the "
        f"cache's dims"
        + (
            f" {first['dims'][0]}/{first['dims'][1]}, seed {SEED}: {first['train']:,} training and "
            f"{first['valid']} validation utterances per epoch."
            if first
            else f", seed {SEED}."
        )
    )
    lines.append(
        f"Each variant in a fresh process: cache opened in {first['cache_mode'] if first and 'cache_mode' in first else 'memory'} mode for the device, {warmup} warm-up "
        f"epoch(s), then {epochs} timed epoch(s) of the unchanged `train_fold` (its `on_epoch` callback "
        f"marks the epochs); an epoch = training steps + validation pass (`infer`) + the checkpoint, "
        f"history and state files it writes. Full run = median epoch x {EPOCHS} epochs x {FOLDS} folds: "
        f"an extrapolation from {epochs} timed epoch(s) of one fold (a synthetic cache's sessions are "
        f"equal in size, so its folds train on as many utterances; IEMOCAP's sessions, and so its folds, differ)."
    )
    lines += [
        "",
        "| variant | epoch s (median, min, n) | CPU s | training s | validation s | file writes s | train utt/s "
        "| first epoch s | peak memory MiB | full run of this cache, 5 folds x 120 epochs "
        f"| full run, {IEMOCAP_UTTERANCES:,} utterances |",
        "|---" * 11 + "|",
    ]
    for name, r in results.items():
        if not isinstance(r, dict):
            lines.append(f"| {VARIANTS[name][2]} | {r} | | | | | | | | | |")
            continue
        s = summarise(r)
        peak = r["peak_gpu_mib"] if r["peak_gpu_mib"] is not None else r["peak_rss_mib"]
        lines.append(
            f"| {label(r)} | {s['epoch_s']:.2f} ({s['min_s']:.2f}, {s['n']}) | {s['cpu_s']:.2f} | {s['train_s']:.2f} | "
            f"{s['validation_s']:.2f} | {s['writes_s']:.2f} | {s['utt_per_s']:.1f} | {s['first_s']:.2f} | "
            f"{peak:,.0f} {'(GPU, allocated, the cache included)' if r['peak_gpu_mib'] is not None else '(process RSS)'} | "
            f"{hours(s['full_run_s'])} | "
            + (
                "the same"
                if r["utterances"] == IEMOCAP_UTTERANCES
                else f"about {hours(s['scaled_epoch_s'] * EPOCHS * FOLDS)} (scaled, see below)"
            )
            + " |"
        )
    lines.append("")
    for r in results.values():
        if not isinstance(r, dict):
            continue
        s = summarise(r)
        lines.append(
            f"- {label(r)}: every epoch, s (the first {r['warmup']} = warm-up): "
            + ", ".join(f"{e['seconds']:.2f}" for e in r["epochs"])
            + "; train loss "
            + ", ".join(f"{e['train_loss']:.3f}" for e in r["epochs"])
        )
        if r["utterances"] != IEMOCAP_UTTERANCES:
            lines.append(
                f"- {label(r)}: this cache has {r['utterances']} utterances, not {IEMOCAP_UTTERANCES:,}. Training "
                f"and validation time scaled per utterance to an IEMOCAP-sized fold ({FOLD_TRAIN:,} training, "
                f"{FOLD_VALID} validation utterances; file writes kept as measured per epoch): an epoch of about "
                f"{s['scaled_epoch_s']:,.0f} s, a full run of about {hours(s['scaled_epoch_s'] * EPOCHS * FOLDS)}. "
                f"A second extrapolation (and from a {r['train']}-utterance batch): `--utterances "
                f"{IEMOCAP_UTTERANCES}` measures it"
            )
        if r["compiled"]:
            d = r["dynamo"]
            lines.append(
                f"- {label(r)}: the first epoch includes compilation, "
                f"{s['first_s'] - s['epoch_s']:.0f} s more than a compiled epoch; train_fold has no compile "
                f"option, so the benchmark made the model compile itself in place (`nn.Module.compile()`) "
                f"and ran the unchanged train_fold. torch._dynamo: {d['graphs']} graphs, {d['graph_breaks']} "
                f"graph breaks ({d['break_reasons']} distinct), recompile limit hit {d['recompile_limit_hits']} "
                f"time(s) (that code then runs uncompiled)"
            )
        if "cache_mode" in r:
            lines.append(
                f"- {label(r)}: {r['placement']}; waited for batches (training and validation) "
                f"{s['data_wait_s']:.2f} s of a {s['epoch_s']:.2f} s epoch ({s['data_wait_s'] / s['epoch_s']:.0%})"
            )
        missing = {"infer", "save_checkpoint", "atomic_save", "write_json"} - set(r["wrapped"])
        if missing:
            lines.append(
                f"- {label(r)}: train_fold no longer calls {', '.join(sorted(missing))} by that "
                f"name; that part of the breakdown counts as training"
            )
    if first:
        lines.append(
            f"- the fold's files on disk after the run: {first['checkpoint_mib']:,.0f} MiB of `.pt` "
            f"(best, last and state, rewritten every epoch); cache load ({first.get('cache_mode', 'memory')} mode, SHA-256 "
            f"checked unless stamped): "
            f"{first['load_s']:.1f} s; float32 matmul precision `{first['matmul_precision']}` (torch's default, "
            f"which ksr keeps); torch threads {first['threads']}; CPU s = this process's CPU time per epoch; 1-minute load average at the end "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
    if len(ok) > 1:
        base = summarise(ok[0])["epoch_s"]
        lines.append(
            f"- speed-up over {label(ok[0])} (its epoch time / theirs): "
            + ", ".join(f"{label(r)} {base / summarise(r)['epoch_s']:.2f}x" for r in ok[1:])
        )
    return "\n".join(lines)


def add_options(ap: argparse.ArgumentParser) -> None:
    """Options of this benchmark (bench/run.py adds them to its own)."""
    g = ap.add_argument_group("gpu-train (bench_train.py)")
    g.add_argument(
        "--utterances",
        type=int,
        default=None,
        help=f"synthetic cache size (default {IEMOCAP_UTTERANCES} with a GPU, {CPU_UTTERANCES} without)",
    )
    g.add_argument("--epochs", type=int, default=None, help="timed epochs per variant (default 2; 1 with --quick)")
    g.add_argument("--warmup", type=int, default=1, help="untimed epochs before them (default 1)")
    g.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all with a GPU, fp32 without; "
        "bf16 is plain float32 on a CPU, as in ksr)",
    )
    g.add_argument("--cache", default=None, help="time this cache instead of a synthetic one")
    g.add_argument(
        "--cache-mode",
        default="memory",
        choices=("memory", "gpu", "host", "stream", "auto"),
        help="where the features live (ksr.cache.modes); default memory, what this bench measured before "
        "(gpu on a GPU). Run once per mode to compare utterances/s and the time waited for data",
    )
    g.add_argument(
        "--variant-timeout",
        type=float,
        default=None,
        help="stop a variant after this many seconds and report it as stopped (the others still run)",
    )


def run(quick: bool = False, options: argparse.Namespace | None = None) -> str:
    o = options or argparse.Namespace(
        utterances=None, epochs=None, warmup=1, variants=None, cache=None, variant_timeout=None, cache_mode="memory"
    )
    gpu = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    epochs = o.epochs or (1 if quick else 2)
    chosen = o.variants.split(",") if o.variants else list(VARIANTS) if gpu else ["fp32"]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"bench_train: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    tmp = Path(tempfile.mkdtemp(prefix="ksr-bench-train-"))  # the cache and the runs; removed at the end
    try:
        if o.cache:
            cache_dir = Path(o.cache)
            cache_note = f"Cache: `{cache_dir}`."
        else:
            from ksr.cache.synthetic import synthetic_meta, write_synthetic_cache

            n = o.utterances or (IEMOCAP_UTTERANCES if gpu else CPU_UTTERANCES)
            cache_dir = tmp / "cache"
            t = time.perf_counter()
            print(f"  writing a synthetic cache of {n} utterances", flush=True)
            meta = write_synthetic_cache(cache_dir, n, synthetic_meta(), seed=0)
            cache_note = (
                f"Synthetic cache of {n:,} utterances in 5 sessions (audio 80..999 frames x {meta.audio_dim}, "
                f"cut/padded to {meta.max_audio_len}; text 3..39 tokens x {meta.text_dim}, cut/padded to "
                f"{meta.max_text_len}; {meta.dtype}; written in {time.perf_counter() - t:.0f} s)."
            )
        results: dict[str, dict | str] = {}
        for name in VARIANTS:
            if name not in chosen:
                if not gpu and VARIANTS[name][0]:
                    results[name] = "skipped: no GPU (ksr's bf16 autocast acts on CUDA only)"
                continue
            print(f"  {name}: {o.warmup} warm-up + {epochs} timed epochs", flush=True)
            try:
                results[name] = run_child(name, cache_dir, epochs, o.warmup, o.variant_timeout, tmp, o.cache_mode)
            except Exception as exc:  # a variant that fails (e.g. no compiler) is reported, not fatal
                results[name] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            print(f"  {name}: {results[name] if isinstance(results[name], str) else 'done'}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return section(results, device_name, epochs, o.warmup, cache_note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "CACHE"), help=argparse.SUPPRESS)
    ap.add_argument("--run-root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    add_options(ap)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.epochs, args.warmup, args.run_root, args.cache_mode)))
        return
    print(run(args.quick, args))


if __name__ == "__main__":
    main()
