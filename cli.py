"""The ``ksr`` command: thin wrappers that parse options and call the stages.

Each stage's commands live in their own section below; a command only parses options, calls
into ``ksr.extract``, ``ksr.cache`` or ``ksr.fuse``, and turns their errors into one-line messages.
"""
from __future__ import annotations

import click

from ksr import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ksr")
def main() -> None:
    """ksr: Key-Sparse Transformer for multimodal speech emotion recognition.

    Stage 1 (extract) turns a corpus into a feature cache; stage 2 (fuse) trains and
    evaluates the KS-Transformer on that cache.
    """


# --- model commands (ksr.fuse) ---------------------------------------------------------------

# The demo's small model and quick schedule, chosen to finish in minutes on 2 CPU cores: one layer
# per stage, AdamW (a departure from both presets), no attention-weight dropout, and audio cut at
# 230 frames (2.3 s) instead of 460. Dims come from the tiny encoders' cache.
DEMO_EPOCHS = 12
DEMO_LR = 4e-3
DEMO_AUDIO_FRAMES = 230


def _demo_model():
    from ksr.fuse import ModelConfig

    return ModelConfig(num_layers=(1, 1, 1), num_heads=4, audio_ffn_dim=64, text_ffn_dim=64, max_positions=512,
                       attention_dropout=0.0, classifier_dropout=0.2)


@main.command("convert-official")
@click.argument("best_pt", type=click.Path(dir_okay=False))
@click.argument("out_pt", type=click.Path(dir_okay=False, writable=True))
@click.option("--heads", default=8, show_default=True, help="Attention heads the model was trained with (not stored in the weights).")
@click.option("--keep-rate", default=0.5, show_default=True, help="Key-sparse keep rate the model was trained with (not stored in the weights).")
def convert_official_cmd(best_pt: str, out_pt: str, heads: int, keep_rate: float) -> None:
    """Convert a checkpoint of the public KS-Transformer code into a ksr checkpoint.

    BEST_PT is a file saved by the public implementation ({"epoch", "model", "optimizer"}, keys
    optionally prefixed "module."). Dims, FFN widths, layer counts and classes are read from the
    tensor shapes; every tensor is checked. OUT_PT loads with ksr.fuse.load_model().
    """
    from ksr.fuse import CheckpointError, convert_official
    from ksr.fuse.official import describe

    try:
        model = convert_official(best_pt, out_pt, num_heads=heads, keep_rate=keep_rate)
    except (CheckpointError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {out_pt}: {describe(model.cfg)}, {heads} heads, keep rate {keep_rate}")




@main.command("demo")
@click.option("--data", default="data/demo", show_default=True, type=click.Path(file_okay=False), help="Where the generated corpus goes.")
@click.option("--cache", "cache_dir", default="caches/demo", show_default=True, type=click.Path(file_okay=False), help="Where its features go.")
@click.option("--run", "run_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False), help="Where the runs and reports go.")
@click.option("--epochs", default=DEMO_EPOCHS, show_default=True, help="Training epochs per fold.")
@click.option("--compare/--no-compare", default=True, show_default=True, help="Also train audio-only and text-only models.")
def demo_cmd(data: str, cache_dir: str, run_dir: str, epochs: int, compare: bool) -> None:
    """The whole pipeline on a built-in corpus, no downloads: corpus, extraction, 5 folds, report.

    Generates the demo corpus (five sessions of two synthetic speakers; docs/demo.md), extracts
    it with the tiny built-in encoders, trains a small KS-Transformer on every fold
    (leave-one-session-out), and prints the cross-validation report (RUN/report.md, report.json).
    With --compare it also trains audio-only and text-only models (RUN/audio-only, RUN/text-only).
    Every step resumes: a rerun reuses the corpus, the cache and finished folds.
    """
    import time
    from pathlib import Path

    from ksr.cache import open_cache
    from ksr.extract.demo import make_demo_corpus
    from ksr.extract.pipeline import extract_corpus
    from ksr.fuse.experiment import train_and_report
    from ksr.fuse.recipes import recipe
    from ksr.fuse.report import to_markdown
    from ksr.fuse.train import RunSpec, model_config_for_cache, pick_device

    began = time.perf_counter()
    manifest = Path(data) / "manifest.csv"
    if not manifest.is_file():
        click.echo(f"[1/3] generating the demo corpus in {data}")
        make_demo_corpus(data, seed=0)
    else:
        click.echo(f"[1/3] reusing the demo corpus in {data}")
    click.echo(f"[2/3] extracting features with tiny-audio + tiny-text into {cache_dir}")
    summary = extract_corpus(manifest, cache_dir, "tiny-audio", "tiny-text", corpus="demo",
                             max_audio_len=DEMO_AUDIO_FRAMES)
    click.echo(summary.format())
    cache = open_cache(cache_dir, progress=False)
    device = pick_device("auto")
    r = recipe("official", optimizer="adamw", epochs=epochs, lr=DEMO_LR, batch_size=16)
    runs = [("fused", "both", Path(run_dir))]
    if compare:
        runs += [("audio only", "audio", Path(run_dir) / "audio-only"), ("text only", "text", Path(run_dir) / "text-only")]
    results, fused_report = {}, None
    for label, modalities, path in runs:
        click.echo(f"[3/3] training {label}: 5 folds x {epochs} epochs -> {path}")
        model = model_config_for_cache(cache, _demo_model().replace(modalities=modalities))
        spec = RunSpec(model=model, recipe=r, cache_meta=cache.meta.to_dict(), cache_dir=str(Path(cache_dir).resolve()))
        report = train_and_report(cache, spec, path, None, [r.seed], device, resume=True, say=click.echo)
        results[label] = report["summary"]
        fused_report = fused_report or report  # the first run is the fused model
    click.echo("")
    click.echo(to_markdown(fused_report))  # the fused model's cross-validation report
    click.echo(f"demo: leave-one-session-out, 5 folds, {len(cache)} utterances, UA chance = 25%")
    for label, s in results.items():
        click.echo(f"  {label:<11} WA {100 * s['wa']:6.2f}%  UA {100 * s['ua']:6.2f}%  "
                   f"(± {100 * s['ua_std_over_folds']:.2f} over folds)")
    click.echo(f"report: {Path(run_dir) / 'report.md'} ({time.perf_counter() - began:.0f} s)")


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def training_options(f):
    """The options ksr train and ksr ablate share (recipe, protocol, model sizes, device)."""
    options = [
        click.option("--cache", "cache_dir", required=True, type=click.Path(exists=True, file_okay=False), help="The feature cache to train on."),
        click.option("--recipe", "recipe_name", type=click.Choice(["paper", "official"]), default="paper", show_default=True, help="Preset: paper = SGD lr 5e-4 halved every 30 epochs; official = the public code's SGD momentum 0.9 + cosine."),
        click.option("--protocol", type=click.Choice(["session", "speaker"]), default="session", show_default=True, help="Leave-one-session-out (fold k tests Session k) or leave-one-speaker-out."),
        click.option("--fold", "folds", multiple=True, type=int, help="Train only these folds (repeatable); default all."),
        click.option("--seeds", default=None, help="Comma-separated seeds (default: the recipe's, 123)."),
        click.option("--select", type=click.Choice(["valid", "test"]), default="valid", show_default=True, help="Pick the epoch on a validation set from the training sessions, or on the TEST set as the public code does (reports are marked)."),
        click.option("--metric", type=click.Choice(["wa", "ua", "macro_f1", "weighted_f1"]), default="wa", show_default=True, help="Selection metric."),
        click.option("--val-fraction", default=0.1, show_default=True, help="Share of each class of the training sessions held out for validation."),
        click.option("--epochs", type=int, default=None, help="Override the recipe's epochs."),
        click.option("--lr", type=float, default=None, help="Override the recipe's learning rate."),
        click.option("--batch-size", type=int, default=None, help="Override the recipe's batch size."),
        click.option("--momentum", type=float, default=None, help="Override the recipe's SGD momentum."),
        click.option("--schedule", type=click.Choice(["step", "cosine", "constant"]), default=None, help="Override the recipe's schedule."),
        click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None, help="Override the recipe's optimizer (both presets use SGD; the demo uses AdamW)."),
        click.option("--layers", default=None, help="Layer counts 'unimodal,ccab,fusion' (default 5,3,2)."),
        click.option("--heads", type=int, default=None, help="Attention heads (default 8)."),
        click.option("--ffn", default=None, help="FFN widths 'audio,text' (default 256,512)."),
        click.option("--keep-rate", type=float, default=None, help="Key-sparse keep rate (default 0.5)."),
        click.option("--no-key-sparse", is_flag=True, help="Vanilla attention everywhere (ablation)."),
        click.option("--modalities", type=click.Choice(["both", "audio", "text"]), default="both", show_default=True, help="Audio-only or text-only models for the unimodal ablations."),
        click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE", help="Set any model config field (repeatable), e.g. --model-option pooling=masked; the departures from the public code are listed by `ksr ablate departures --help`."),
        click.option("--attention", "attention_impl", type=click.Choice(["fast", "plain"]), default=None, help="Attention implementation (same numbers; plain keeps the public code's operations)."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto."),
        click.option("--amp/--no-amp", default=True, show_default=True, help="bfloat16 autocast on GPU (ignored on CPU)."),
        click.option("--cache-mode", type=click.Choice(["auto", "memory", "stream"]), default="auto", show_default=True, help="Load the cache into memory or stream it from disk."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished epoch."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _setup_training(o: dict):
    """(cache, spec, device, ranks, folds, seeds) from the shared training options."""
    from pathlib import Path

    from ksr.cache import open_cache
    from ksr.fuse import ModelConfig
    from ksr.fuse.config import parse_model_option
    from ksr.fuse.recipes import recipe
    from ksr.fuse.train import CACHE_FIELDS, RunSpec, init_ranks, model_config_for_cache, pick_device

    r = recipe(o["recipe_name"], epochs=o["epochs"], lr=o["lr"], batch_size=o["batch_size"], momentum=o["momentum"],
               schedule=o["schedule"], optimizer=o["optimizer"])
    changes = {"classifier_dropout": r.classifier_dropout, "modalities": o["modalities"]}
    if o["layers"]:
        changes["num_layers"] = tuple(_int_list(o["layers"]))
    if o["ffn"]:
        changes["audio_ffn_dim"], changes["text_ffn_dim"] = _int_list(o["ffn"])
    if o["heads"]:
        changes["num_heads"] = o["heads"]
    if o["keep_rate"] is not None:
        changes["keep_rate"] = o["keep_rate"]
    if o["no_key_sparse"]:
        changes["key_sparse"] = "none"
    if o["attention_impl"]:
        changes["attention_impl"] = o["attention_impl"]
    for text in o["model_options"]:  # checked before a large cache is read
        try:
            key, value = parse_model_option(text)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--model-option") from None
        if key in CACHE_FIELDS:
            raise click.BadParameter(f"{text!r}: {key} comes from the cache's features and classes",
                                     param_hint="--model-option")
        changes[key] = value
    dev = pick_device(o["device"])
    ranks = init_ranks(dev)  # under torchrun: DistributedDataParallel over the ranks
    cache = open_cache(o["cache_dir"], mode=o["cache_mode"], device=dev if dev.type == "cuda" else "cpu",
                       progress=None if ranks.main else False)
    spec = RunSpec(model=model_config_for_cache(cache, ModelConfig(), **changes), recipe=r,
                   protocol=o["protocol"], select=o["select"], metric=o["metric"], val_fraction=o["val_fraction"],
                   cache_meta=cache.meta.to_dict(), cache_dir=str(Path(o["cache_dir"]).resolve()))
    if o["select"] == "test" and ranks.main:
        click.echo("warning: --select test picks each fold's epoch on its TEST set (the public code's protocol); "
                   "reports are marked as such", err=True)
    return cache, spec, dev, ranks, list(o["folds"]) or None, _int_list(o["seeds"]) or [r.seed]


@main.command("train")
@training_options
@click.option("--run", "--run-dir", "run_dir", default="runs/main", show_default=True, type=click.Path(file_okay=False), help="Run directory (config, checkpoints, reports); under torchrun spell it --run-dir.")
def train_cmd(run_dir, **options) -> None:
    """Train one KS-Transformer per fold on a feature cache, then write the report.

    Model dims and classes come from the cache. Every setting is saved in RUN/run.json; a killed
    run continues with --resume. Without --fold, all folds of the protocol are trained.
    Under torchrun (e.g. torchrun --nproc-per-node 2 --no-python ksr train ...) the ranks train
    with DistributedDataParallel; rank 0 writes.
    """
    from pathlib import Path

    from ksr.cache import CacheError
    from ksr.fuse.experiment import train_and_report
    from ksr.fuse.train import RunError

    run = Path(run_dir)
    try:
        cache, spec, dev, ranks, folds, seeds = _setup_training(options)
        say = click.echo if ranks.main else (lambda *a, **k: None)
        say(f"training {len(folds) if folds else 'all'} fold(s) x {len(seeds)} seed(s) on {cache!r} -> {run}"
            + (f" on {ranks.world} ranks" if ranks.world > 1 else ""))
        report = train_and_report(cache, spec, run, folds, seeds, dev, ranks, resume=options["resume"],
                                  amp=options["amp"], say=say)
    except (CacheError, RunError, ValueError, OSError) as e:  # CheckpointError is a ValueError
        raise click.ClickException(str(e)) from None
    if ranks.world > 1:
        torch_distributed_done()
    if report is None:
        return
    _point_latest(run)
    s = report["summary"]
    click.echo(f"WA {100 * s['wa']:.2f}%  UA {100 * s['ua']:.2f}%  (mean over folds; report: {run / 'report.md'})")


@main.command("ablate")
@click.argument("kind", type=click.Choice(["keep-rate", "ccabs", "key-sparse", "modality", "departures"]))
@training_options
@click.option("--root", default=None, type=click.Path(file_okay=False), help="Where the sweep's runs go (default runs/ablate-KIND).")
@click.option("--values", default=None, help="Comma-separated values (default: keep-rate 0.1..0.9, ccabs 0..4, key-sparse on,off, modality both,audio,text, departures all of them).")
def ablate_cmd(kind, root, values, **options) -> None:
    """Train one run per value of an ablation and tabulate them (ablation.md/.csv/.json).

    \b
    departures: the public model against each named departure from it:
      public                the public implementation's computation (the default model)
      sinusoidal-positions  sinusoidal positional tables instead of fixed random ones
      masked-pooling        mean pooling over the true frames/tokens only
      mask-ccab-self        the CCAB self-attention layer masks padded keys
      mask-fusion           the deep-fusion layers mask padded keys
      single-ccab-residual  the CCAB stack's residual is added once, not twice
      ks-renormalise        key-sparse rows renormalised to sum to 1
      all                   every departure at once
    """
    from pathlib import Path

    from ksr.cache import CacheError
    from ksr.fuse.experiment import ablation_markdown, run_ablation
    from ksr.fuse.train import RunError

    try:
        cache, spec, dev, ranks, folds, seeds = _setup_training(options)
        if ranks.world > 1:
            raise click.ClickException("ksr ablate runs in one process; use torchrun with ksr train")
        summary = run_ablation(kind, values.split(",") if values else None, cache, spec,
                               Path(root or f"runs/ablate-{kind}"), folds, seeds, dev, resume=options["resume"],
                               amp=options["amp"], say=click.echo)
    except (CacheError, RunError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(ablation_markdown(summary))


def torch_distributed_done() -> None:
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def _point_latest(run) -> None:
    """runs/latest -> the last trained run, so `ksr eval` works without --run."""
    import os
    from pathlib import Path

    latest = Path("runs") / "latest"
    try:
        latest.parent.mkdir(exist_ok=True)
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        os.symlink(os.path.relpath(Path(run).resolve(), latest.parent.resolve()), latest)
    except OSError:
        pass  # a convenience only


@main.command("eval")
@click.option("--run", "run_dir", default="runs/latest", show_default=True, type=click.Path(file_okay=False), help="The run to evaluate (default: the last trained).")
@click.option("--fold", "folds", multiple=True, type=int, help="Report only this fold (repeatable), e.g. --fold 5 (test = Session 5).")
@click.option("--cache", "cache_dir", default=None, type=click.Path(exists=True, file_okay=False), help="Cache with the test utterances (default: the run's training cache).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Where to write the report (default: the run directory).")
@click.option("--device", default="auto", show_default=True)
def eval_cmd(run_dir, folds, cache_dir, out_dir, device) -> None:
    """Evaluate the selected checkpoints on their test folds and write the report.

    Per fold: WA (accuracy), UA (macro recall), macro F1, weighted F1, confusion matrix, selected
    epoch; over folds: mean and std, and pooled over all test utterances. Written as JSON,
    Markdown and CSV, with PNG confusion matrices and learning curves.
    """
    from pathlib import Path

    from ksr.cache import CacheError, open_cache
    from ksr.fuse.report import evaluate_run, to_markdown, write_report
    from ksr.fuse.train import RunError, load_run, pick_device

    run = Path(run_dir)
    try:
        spec = load_run(run)
        source = cache_dir or spec.cache_dir
        if not source or not Path(source).is_dir():
            raise RunError(f"the run's cache {source!r} is not there; pass --cache")
        dev = pick_device(device)
        cache = open_cache(source, device=dev if dev.type == "cuda" else "cpu")
        report = evaluate_run(run, cache, spec, folds=list(folds) or None, device=dev)
        stem = "report" if not folds else "report_fold" + "_".join(str(f) for f in folds)
        write_report(report, Path(out_dir) if out_dir else run, stem)
    except (CacheError, RunError, ValueError, OSError) as e:  # CheckpointError is a ValueError
        raise click.ClickException(str(e)) from None
    click.echo(to_markdown(report))


# --- prediction (ksr.predict: extract + fuse) --------------------------------------------------


@main.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A ksr checkpoint, e.g. runs/main/seed123/fold5/best.pt.")
@click.option("--audio", "audio_path", default=None, type=click.Path(dir_okay=False), help="The utterance's audio file (any rate or channel count; read as extraction reads it).")
@click.option("--text", default=None, help="The utterance's transcript (not needed by an audio-only model).")
@click.option("--audio-encoder", default=None, help="Audio encoder spec (default: the one the checkpoint records); needed when the recorded name is a local folder.")
@click.option("--text-encoder", default=None, help="Text encoder spec (default: the one the checkpoint records).")
@click.option("--force", is_flag=True, help="Use the given encoders even when their weights or layer differ from the recorded ones.")
@click.option("--attention", "attention_png", default=None, type=click.Path(dir_okay=False), help="Also draw the key-sparse cross attention of the last interaction layer into this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto.")
def predict_cmd(checkpoint, audio_path, text, audio_encoder, text_encoder, force, attention_png, as_json, device) -> None:
    """Predict the emotion of one utterance with a trained checkpoint.

    Features are made with the encoders recorded in the checkpoint (checked by their weights'
    digest), cut, padded and stored-dtype rounded as the training cache was. Prints the label
    and the class probabilities. See docs/predict.md.
    """
    import json

    from ksr.predict import PredictError, draw_attention, predict

    try:
        result = predict(checkpoint, audio_path, text, audio_encoder=audio_encoder, text_encoder=text_encoder,
                         device=device, attention=attention_png is not None, force=force)
    except PredictError as e:
        raise click.ClickException(str(e)) from None
    if attention_png is not None:
        try:
            draw_attention(result, attention_png)
        except OSError as e:  # the figure's folder is missing or not writable
            raise click.ClickException(f"cannot write {attention_png}: {e.strerror or e}") from None
    if as_json:
        out = result.to_dict()
        out["attention_png"] = attention_png
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"label: {result.label}")
    for name, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {name:<12} {p:7.4f}  {'#' * round(40 * p)}")
    if attention_png is not None:
        click.echo(f"attention: {attention_png}")


# --- cache commands (ksr.cache) --------------------------------------------------------------


@main.group("cache")
def cache_group() -> None:
    """Inspect and check a feature cache (the HDF5 shards extraction writes)."""


@cache_group.command("info")
@click.argument("cache_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def cache_info_cmd(cache_dir: str, as_json: bool) -> None:
    """What CACHE_DIR holds: counts per class, session and speaker, encoders, dims, and the
    size on disk against the ideal size. Reads metadata only (see `ksr cache verify`)."""
    import json

    from ksr.cache import CacheError, cache_info, format_info

    try:
        info = cache_info(cache_dir)
    except (CacheError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(info, indent=1) if as_json else format_info(info))


@cache_group.command("verify")
@click.argument("cache_dir", type=click.Path(file_okay=False))
@click.option("--no-checksums", is_flag=True, help="Skip the SHA-256 of every shard (sizes, schema and metadata are still checked).")
def cache_verify_cmd(cache_dir: str, no_checksums: bool) -> None:
    """Check CACHE_DIR: indexes, shard files, sizes, checksums, schema and metadata.

    Prints every problem, one line each naming the file, and exits with status 1 if there
    is any.
    """
    from ksr.cache import verify_cache

    report = verify_cache(cache_dir, checksums=not no_checksums)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for problem in report.problems:
        click.echo(f"error: {problem}", err=True)
    if report.problems:
        raise SystemExit(1)
    hashed = f", {report.bytes_hashed / 1e6:,.1f} MB hashed" if not no_checksums else ", checksums skipped"
    click.echo(f"ok: {cache_dir}: {report.utterances} utterances in {report.shards} shards{hashed}")


# --- corpus and extraction commands (ksr.extract) --------------------------------------------


@main.group("prepare")
def prepare_cmd() -> None:
    """Write or check a corpus manifest: one CSV row per utterance (docs/manifest.md)."""


@prepare_cmd.command("iemocap")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="The manifest CSV to write.")
def prepare_iemocap_cmd(root: str, out: str) -> None:
    """Index IEMOCAP_full_release (ROOT) for the 4-class task: ang, hap (+exc), neu, sad.

    Prints the counts per session and class, what was skipped as not data, and warnings (a
    complete release gives 5,531 utterances).
    """
    from ksr.extract.iemocap import IemocapError, format_report, prepare_iemocap
    from ksr.extract.manifest import write_manifest

    try:
        report = prepare_iemocap(root)
    except IemocapError as e:
        raise click.ClickException(str(e)) from None
    click.echo(format_report(report))
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not report.rows:
        raise click.ClickException(f"no 4-class utterances found under {report.root}")
    write_manifest(out, report.rows)
    click.echo(f"wrote {report.total} rows to {out}")


@prepare_cmd.command("check")
@click.argument("manifest", type=click.Path(dir_okay=False))
def prepare_check_cmd(manifest: str) -> None:
    """Validate a manifest (yours or prepared): columns, rows, audio files present."""
    from collections import Counter

    from ksr.extract.manifest import ManifestError, read_manifest

    try:
        m = read_manifest(manifest, strict=False)
    except ManifestError as e:
        raise click.ClickException(str(e)) from None
    missing = [r for r in m.rows if not r.audio.is_file()]
    labels = Counter(r.label for r in m.rows)
    sessions = Counter(r.session for r in m.rows)
    click.echo(f"{manifest}: {len(m)} usable rows, {len({r.speaker for r in m.rows})} speakers")
    click.echo("labels: " + ", ".join(f"{k} {n}" for k, n in sorted(labels.items())))
    click.echo("sessions: " + ", ".join(f"{k}: {n}" for k, n in sorted(sessions.items())))
    for problem in m.problems:
        click.echo(f"error: {problem}", err=True)
    for r in missing[:10]:
        click.echo(f"error: {r.id}: audio file not found: {r.audio}", err=True)
    if len(missing) > 10:
        click.echo(f"error: ... {len(missing) - 10} more audio files not found", err=True)
    if m.problems or missing:
        raise click.ClickException(
            f"{len(m.problems)} bad rows, {len(missing)} missing audio files")


@main.command("encoders")
@click.argument("spec", required=False)
@click.option("--tiny-dir", type=click.Path(file_okay=False), default=None,
              help="Where the built-in tiny encoders are kept (default ~/.cache/ksr/tiny).")
def encoders_cmd(spec: str | None, tiny_dir: str | None) -> None:
    """List every kind of encoder (spec, dims, frame rate, what); with SPEC, load it and print
    what it declares.

    Examples: tiny-audio, paper-text, hf:facebook/wav2vec2-base@layer=6, hf:/models/my-wavlm.
    """
    from ksr.extract.encoders import EncoderError, load_encoder
    from ksr.extract.encoders.kinds import encoder_kinds, format_kinds

    if spec is None:
        click.echo(format_kinds(encoder_kinds()))
        return
    try:
        encoder = load_encoder(spec, tiny_root=tiny_dir)
    except EncoderError as e:
        raise click.ClickException(str(e)) from None
    for key, value in encoder.describe().items():
        click.echo(f"{key:<12} {value}")


@prepare_cmd.command("demo")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Same seed, same corpus (byte for byte).")
@click.option("--per-speaker", default=32, show_default=True,
              help="Utterances per speaker (a multiple of 4); 10 speakers.")
def prepare_demo_cmd(out: str, seed: int, per_speaker: int) -> None:
    """Write the built-in demo corpus into OUT: OUT/wav/*.wav and OUT/manifest.csv."""
    from ksr.extract.demo import make_demo_corpus

    try:
        path = make_demo_corpus(out, seed=seed, per_speaker=per_speaker)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote the demo corpus: {path}")


@main.command("extract")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
              help="The cache directory (created; a rerun continues it).")
@click.option("--audio-encoder", default="paper-audio", show_default=True,
              help="Audio encoder spec (see `ksr encoders`); paper-audio = wav2vec 1.0 large "
                   "from $KSR_WAV2VEC_LARGE.")
@click.option("--text-encoder", default="paper-text", show_default=True,
              help="Text encoder spec; paper-text = RoBERTa large, last layer.")
@click.option("--classes", default=None,
              help="Class order, comma-separated (default: ang,neu,hap,sad for the 4-class "
                   "IEMOCAP labels, else the manifest's labels sorted); other labels are skipped.")
@click.option("--corpus", default=None, help="Corpus name in the cache (default: from the manifest path).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True, help="Storage dtype of the features.")
@click.option("--batch-seconds", type=float, default=None,
              help="Padded audio per batch, in seconds (default 10 on CPU, 120 on GPU).")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda in float16 when present, else cpu), cpu, cuda or cuda:N.")
@click.option("--shard-size", type=int, default=None,
              help="Utterances per shard file (default 512).")
@click.option("--max-audio-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Encode only the first this-many seconds of each utterance (default: all; "
                   "recorded in the cache; docs/encoders.md says how far each encoder's "
                   "features move).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_cmd(manifest, out, audio_encoder, text_encoder, classes, corpus, dtype, batch_seconds,
                device, shard_size, max_audio_seconds, no_progress) -> None:
    """Encode every utterance of MANIFEST with frozen encoders into a feature cache.

    Resumable: a rerun skips what the cache holds. Utterances that cannot be used get one line
    each in OUT/errors-<writer>.tsv and are counted in the summary. Under torchrun
    (--nproc-per-node N) each rank extracts its share into its own shards.
    """
    from ksr.cache import CacheError
    from ksr.extract.encoders import EncoderError
    from ksr.extract.manifest import ManifestError
    from ksr.extract.pipeline import DEFAULT_SHARD_SIZE, ExtractError, extract_corpus
    from ksr.extract.plan import ranks_from_env

    class_list = None
    if classes is not None:
        class_list = [c.strip() for c in classes.split(",") if c.strip()]
        if not class_list or len(set(class_list)) != len(class_list):
            raise click.BadParameter(f"expected distinct comma-separated names, got {classes!r}",
                                     param_hint="--classes")
    try:
        ranks = ranks_from_env()
        summary = extract_corpus(
            manifest, out, audio_encoder, text_encoder, classes=class_list, corpus=corpus,
            dtype=dtype, batch_seconds=batch_seconds,
            shard_size=shard_size or DEFAULT_SHARD_SIZE, device=device,
            max_audio_seconds=max_audio_seconds, progress=not no_progress, ranks=ranks)
    except (ExtractError, ManifestError, EncoderError, CacheError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if ranks.main:
        click.echo(summary.format())


if __name__ == "__main__":
    main()
