"""The model commands: train, ablate, eval, predict, demo, convert-official."""

from __future__ import annotations

import click

from . import Interrupted, main
from .options import LazyChoice, bootstrap_option, force_option, setup_training, training_options

# --- model commands (ksr.fuse) ---------------------------------------------------------------


@main.command("convert-official")
@click.argument("best_pt", type=click.Path(dir_okay=False))
@click.argument("out_pt", type=click.Path(dir_okay=False, writable=True))
@click.option(
    "--heads",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Attention heads the model was trained with (not stored in the weights).",
)
@click.option(
    "--keep-rate",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Key-sparse keep rate the model was trained with (not stored in the weights).",
)
@force_option
def convert_official_cmd(best_pt: str, out_pt: str, heads: int, keep_rate: float, force: bool) -> None:
    """Convert a checkpoint of the public KS-Transformer code into a ksr checkpoint.

    BEST_PT is a file saved by the public implementation ({"epoch", "model", "optimizer"}, keys
    optionally prefixed "module."). Dims, FFN widths, layer counts and classes are read from the
    tensor shapes; every tensor is checked. OUT_PT loads with ksr.fuse.load_model().
    """
    from ..common.files import check_replace
    from ..fuse import convert_official
    from ..fuse.train.official import describe_public_model

    check_replace(out_pt, force, {"checkpoint": best_pt})

    model = convert_official(best_pt, out_pt, num_heads=heads, keep_rate=keep_rate)
    click.echo(f"wrote {out_pt}: {describe_public_model(model.cfg)}, {heads} heads, keep rate {keep_rate}")


@main.command("demo")
@click.option(
    "--data",
    default="data/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the generated corpus goes.",
)
@click.option(
    "--cache",
    "cache_dir",
    default="caches/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where its features go.",
)
@click.option(
    "--run",
    "--run-dir",
    "run_dir",
    default="runs/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the runs and reports go.",
)
@click.option(
    "--epochs",
    default=None,
    type=click.IntRange(min=1),
    help="Training epochs per fold (default 28: the ksr recipe's 24 + 4).",
)
@click.option(
    "--compare/--no-compare", default=True, show_default=True, help="Also train audio-only and text-only models."
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Training processes, one thread each, sharing every batch (torchrun, DistributedDataParallel; "
    "the numbers move within seed noise). Default: 2 on a CPU with 2 or more cores, else 1.",
)
def demo_cmd(data: str, cache_dir: str, run_dir: str, epochs: int, compare: bool, processes: int | None) -> None:
    """The whole pipeline on a built-in corpus, no downloads: corpus, extraction, 5 folds, report.

    Generates the demo corpus (320 utterances, five sessions of two synthetic speakers, emotion
    carried by the voice, the words, or only both together; docs/demo.md), extracts it with the
    tiny built-in encoders, trains a small KS-Transformer on every fold (leave-one-session-out)
    with the ksr recipe, and prints the cross-validation report (RUN/report.md) and a table of
    the model beside its linear-probe baseline. With --compare it also trains audio-only and
    text-only models (RUN/audio-only, RUN/text-only). Every step resumes.

    \b
    How the demo departs from the paper's setting, to finish in minutes on 2 CPU cores:
      encoders  tiny-audio + tiny-text: tiny models with random weights, not
                wav2vec / RoBERTa large (nothing is downloaded)
      model     one layer per stage, 4 heads, FFN 64, no attention-weight dropout
                (ksr train --size small), classifier dropout 0.2; inputs
                standardised per dimension
      schedule  the ksr recipe: AdamW, lr 4e-3, 1 epoch of warm-up, cosine, batch 16,
                28 epochs (the recipe's 24 + 4), last epoch kept (paper: SGD lr
                5e-4, 120 epochs, which does not train here)
      audio     230 frames (2.3 s) kept instead of 460
      processes 2 on a CPU with 2 cores or more (torchrun, DistributedDataParallel,
                one thread each): each batch of 16 is shared, 8 per process
    """
    from pathlib import Path

    from ..common.optional import require_audio

    require_audio("ksr demo")  # before any work: one line naming the extra
    from ..common import ranks_from_env
    from ..demo import (
        EPOCHS,
        attribute_table,
        comparison_table,
        default_processes,
        lost_peer,
        run_demo,
        run_under_torchrun,
    )
    from ..fuse.report.render import to_markdown

    epochs = epochs or EPOCHS

    if ranks_from_env().world == 1 and (processes or default_processes()) > 1:
        args = ["--data", data, "--cache", cache_dir, "--run-dir", run_dir, "--epochs", str(epochs)]
        run_under_torchrun(processes or default_processes(), [*args, "--compare" if compare else "--no-compare"])
        return
    try:
        result = run_demo(data, cache_dir, run_dir, epochs=epochs, compare=compare, say=click.echo)
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        raise SystemExit(1) from None  # the other rank stopped and has said why
    if result is None:  # a rank other than 0: rank 0 prints
        return
    click.echo("")
    click.echo(to_markdown(result.fused_report))  # the fused model's cross-validation report
    click.echo(f"demo: leave-one-session-out, 5 folds, {result.utterances} utterances, UA chance = 25%")
    click.echo(comparison_table(result))
    if result.attributes:
        click.echo(attribute_table(result))
    click.echo(f"report: {Path(run_dir) / 'report.md'} ({result.seconds:.0f} s)")


@main.command("train")
@training_options
@click.option(
    "--run",
    "--run-dir",
    "run_dir",
    default="runs/main",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Run directory (config, checkpoints, reports); under torchrun spell it --run-dir.",
)
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also fit the linear-probe baseline on the same folds (seconds; RUN/baseline-probe) and report it beside the model.",
)
@bootstrap_option
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[DIR]",
    help="Write TensorBoard curves (loss, lr, valid and test/ metrics per epoch; DIR/seedS/foldK) into DIR, default RUN/tensorboard. Needs pip install 'ksr[tensorboard]'.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars (logs stay free of carriage returns).")
def train_cmd(run_dir, baseline, resamples, tensorboard_dir, no_progress, **options) -> None:
    """Train one KS-Transformer per fold on a feature cache, then write the report.

    Model dims and classes come from the cache; every other model setting has its own option
    (the departures from the public code are listed by `ksr ablate departures --help`). Every
    setting is saved in RUN/run.json; a killed run continues with --resume. Without --fold, all
    folds of the protocol are trained. Under torchrun (e.g. torchrun --nproc-per-node 2
    --no-python ksr train ...) the ranks train with DistributedDataParallel; rank 0 writes.
    """
    from pathlib import Path

    from ..fuse.report.render import printed_summary
    from ..fuse.train.runs import point_latest, run_file

    run = Path(run_dir)
    board = None
    if tensorboard_dir is not None:  # before the cache is read: a missing writer stops here
        from ..fuse.report.tensorboard import TensorBoard
        from ..fuse.train.runs import tensorboard_dir as tensorboard_dir_of

        board = TensorBoard(tensorboard_dir or tensorboard_dir_of(run))
    setup, folds, seeds = setup_training(options, run_dir, progress=False if no_progress else None)
    ranks = setup.ranks
    say = click.echo if ranks.main else (lambda *a, **k: None)
    say(
        f"training {len(folds) if folds else 'all'} fold(s) x {len(seeds)} seed(s) on {setup.cache!r} -> {run}"
        + (f" on {ranks.world} ranks" if ranks.world > 1 else "")
    )
    try:
        report = _train(setup, run, folds, seeds, options, say, baseline, resamples, board, not no_progress)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; every finished epoch is saved: ksr train --run {run} --resume continues"
        ) from None
    finally:
        if ranks.main and run_file(run).is_file():  # finished or not: a bare `ksr eval` reads this run
            point_latest(run)
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if report is None:
        return
    for line in printed_summary(report):
        click.echo(line)


def _train(setup, run, folds, seeds, options, say, baseline, resamples, board, progress):
    from ..fuse.report.experiment import train_and_report
    from ..fuse.report.stats import Bootstrap

    return train_and_report(
        setup.cache,
        setup.spec,
        run,
        folds,
        seeds,
        setup.device,
        setup.ranks,
        resume=options["resume"],
        amp=options["amp"],
        say=say,
        baseline=baseline,
        bootstrap=Bootstrap(resamples),
        tensorboard=board,
        progress=progress,
    )


def _ablation_kinds() -> list[str]:
    from ..fuse.report.experiment import ABLATIONS

    return list(ABLATIONS)


@main.command("ablate")
@click.argument("kind", type=LazyChoice(_ablation_kinds))
@training_options
@click.option(
    "--root",
    default=None,
    type=click.Path(file_okay=False),
    help="Where the sweep's runs go (default runs/ablate-KIND).",
)
@click.option(
    "--values",
    default=None,
    help="Comma-separated values (default: keep-rate 0.1..0.9, ccabs 0..4, key-sparse on,off, modality both,audio,text, departures all of them).",
)
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
      standardize-input     each feature dimension standardised with the training fold's statistics
      all                   every departure at once
    """
    from pathlib import Path

    from ..fuse.report.experiment import ablation_markdown, run_ablation

    setup, folds, seeds = setup_training(options)
    if setup.ranks.world > 1:
        raise click.ClickException("ksr ablate runs in one process; use torchrun with ksr train")
    summary = run_ablation(
        kind,
        values.split(",") if values else None,
        setup.cache,
        setup.spec,
        Path(root or f"runs/ablate-{kind}"),
        folds,
        seeds,
        setup.device,
        resume=options["resume"],
        amp=options["amp"],
        say=click.echo,
    )
    click.echo(ablation_markdown(summary))


@main.command("eval")
@click.option(
    "--run",
    "run_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="The run to evaluate (default: runs/latest, the last run ksr train finished).",
)
@click.option(
    "--fold",
    "folds",
    multiple=True,
    type=click.IntRange(min=1),
    help="Report only this fold (repeatable), e.g. --fold 5 (test = Session 5).",
)
@click.option(
    "--cache",
    "cache_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Cache with the test utterances (default: the run's training cache). A cache of another corpus "
    "(made with the same encoders) is a cross-corpus test: every fold's model on all of it.",
)
@click.option(
    "--class-map",
    default=None,
    help="Cross-corpus: the tested corpus's class names as the run's, e.g. joy=hap,anger=ang,fear=- (- leaves a class out).",
)
@click.option(
    "--cross-corpus",
    is_flag=True,
    help="Test every fold's model on all of --cache even when its corpus has the run's corpus name.",
)
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where to write the report (default: the run directory).",
)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto.")
@click.option(
    "--allow-incomplete", is_flag=True, help="Print the mean over folds even when a fold stopped before its last epoch."
)
@bootstrap_option
@click.option(
    "--bootstrap-seed",
    default=None,
    type=click.IntRange(min=0),
    help="The bootstrap's seed (default: a fixed one, recorded).",
)
def eval_cmd(
    run_dir, folds, cache_dir, class_map, cross_corpus, out_dir, device, allow_incomplete, resamples, bootstrap_seed
) -> None:
    """Evaluate the selected checkpoints on their test folds and write the report.

    With --cache of another corpus (or --cross-corpus, --class-map) every fold's model is tested
    on all of that cache instead: the report (RUN/report_on_CORPUS.*) says which corpus trained
    and which tested, and adds the ensemble of all the models.

    Per fold: WA (accuracy), UA (macro recall), macro F1, weighted F1, confusion matrix, selected
    epoch; over folds: mean and std, and pooled over all test utterances. Written as JSON,
    Markdown and CSV, with PNG confusion matrices and learning curves. A run trained with
    --protocol split (run.json says so) is reported on each test split, mean and std over seeds.
    """
    from pathlib import Path

    from ..fuse.report.cross_corpus import evaluate_saved_run_across
    from ..fuse.report.render import to_markdown, write_report
    from ..fuse.report.stats import DEFAULT_SEED, Bootstrap
    from ..fuse.train.runs import LATEST, cross_corpus_stem, report_stem

    run_dir = run_dir or str(LATEST)
    boot = Bootstrap(resamples, DEFAULT_SEED if bootstrap_seed is None else bootstrap_seed)
    report = evaluate_saved_run_across(
        Path(run_dir),
        cache_dir,
        class_map,
        cross_corpus,
        folds=list(folds) or None,
        device=device,
        allow_incomplete=allow_incomplete,
        bootstrap=boot,
    )
    stem = report_stem(list(folds))
    if "cross_corpus" in report:  # beside the run's own report, never over it
        stem = cross_corpus_stem(report["cross_corpus"]["tested_on"], list(folds))
    write_report(report, Path(out_dir) if out_dir else Path(run_dir), stem)
    click.echo(to_markdown(report))


# --- prediction (ksr.predict: extract + fuse) --------------------------------------------------


def predict_many(options: dict, single) -> None:
    """``ksr predict`` in batch mode (``ksr.batch_predict``)."""
    from pathlib import Path

    from ..batch_predict import BatchRequest, predict_batch, side_file
    from ..predict import PredictError

    if single:
        raise PredictError("--audio, --text, --attention and --json predict one utterance; batch mode takes none")
    if options["out"] is None:
        raise PredictError("batch mode writes its predictions to --out FILE.csv")
    if options["manifest"] is None and options["folder"] is None:
        raise PredictError("batch mode reads --manifest M.csv or --folder DIR")
    paths = {k: Path(v) for k, v in options.items() if k in ("out", "manifest", "folder", "checkpoint", "run") and v}
    result = predict_batch(BatchRequest(**{**options, **paths}), say=lambda line: click.echo(line, err=True))
    failed = f", {len(result.failed)} failed (see {side_file(result.out, 'errors.tsv')})"
    click.echo(
        f"predicted {result.predicted} utterance(s) with {len(result.members)} model(s){failed if result.failed else ''}"
        f" -> {', '.join(str(p) for p in result.files)} ({result.seconds:.1f} s)"
    )


@main.command("predict")
@click.option(
    "--checkpoint",
    default=None,
    type=click.Path(dir_okay=False),
    help="A ksr checkpoint, e.g. runs/main/seed123/fold5/best.pt.",
)
@click.option(
    "--run",
    "run_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Batch mode: every selected checkpoint of this run (all folds and seeds) votes; "
    "the mean of their probabilities decides.",
)
@click.option(
    "--manifest",
    default=None,
    type=click.Path(dir_okay=False),
    help="Batch mode: a CSV with columns id, audio (and the transcripts' column); predictions go to --out.",
)
@click.option(
    "--folder",
    default=None,
    type=click.Path(file_okay=False),
    help="Batch mode: every audio file under this folder (transcripts from --asr, or none for audio-only models).",
)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Batch mode: the predictions CSV.")
@click.option(
    "--text-column",
    default="text",
    show_default=True,
    help="Batch mode: the manifest column that holds the transcripts.",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["csv", "msp-podcast"]),
    default="csv",
    show_default=True,
    help="Batch mode: csv (id, label, p_<class>...), or the MSP-Podcast challenge's files (docs/predict.md).",
)
@click.option(
    "--keep-features",
    is_flag=True,
    help="Batch mode: keep the work folder OUT.work (the features) after the predictions are written.",
)
@click.option(
    "--audio",
    "audio_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="The utterance's audio file (any rate or channel count; read as extraction reads it).",
)
@click.option("--text", default=None, help="The utterance's transcript (not needed by an audio-only model).")
@click.option(
    "--asr",
    "asr_spec",
    default=None,
    help="Without --text: transcribe the audio with this speech-recognition model "
    "(hf:<Whisper hub id or folder>, see docs/transcripts.md) and print the transcript used.",
)
@click.option(
    "--audio-encoder",
    default=None,
    help="Audio encoder spec (default: the one the checkpoint records); needed when the recorded name is a local folder.",
)
@click.option("--text-encoder", default=None, help="Text encoder spec (default: the one the checkpoint records).")
@click.option(
    "--force",
    is_flag=True,
    help="Use the given encoders even when their weights or layer differ from the recorded ones; "
    "in batch mode also overwrite --out.",
)
@click.option(
    "--attention",
    "attention_png",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also draw the key-sparse cross attention of the last interaction layer into this figure (.png, .pdf or .svg).",
)
@click.option(
    "--max-duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Refuse an audio file whose header gives more seconds than this (default 600, as extraction), "
    "before decoding it: one huge file cannot take all memory; 'inf' lifts the limit.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto.")
def predict_cmd(
    checkpoint,
    run_dir,
    manifest,
    folder,
    out,
    text_column,
    out_format,
    keep_features,
    audio_path,
    text,
    asr_spec,
    audio_encoder,
    text_encoder,
    force,
    attention_png,
    max_duration,
    as_json,
    device,
) -> None:
    """Predict the emotion of one utterance, or of many (--manifest or --folder, into --out).

    Features are made with the encoders recorded in the checkpoint (checked by their weights'
    digest), cut, padded and stored-dtype rounded as the training cache was. Prints the label
    and the class probabilities. In batch mode the features go through the extraction pipeline
    (batched, resumable: run the same command again after a kill) and one CSV row per utterance
    is written; --run makes every fold and seed of a run vote. See docs/predict.md.
    """
    import json

    from ..common.optional import require_audio

    require_audio("ksr predict")  # before any work (and before ..predict imports soundfile): one line
    from ..predict import PredictError, draw_attention, predict_one

    if manifest or folder or out or run_dir:
        batch = dict(manifest=manifest, folder=folder, out=out, run=run_dir, checkpoint=checkpoint)
        batch.update(text_column=text_column, format=out_format, keep_features=keep_features, asr=asr_spec)
        batch.update(audio_encoder=audio_encoder, text_encoder=text_encoder, force=force, device=device)
        batch.update({} if max_duration is None else {"max_duration": max_duration})
        return predict_many(batch, single=audio_path or text or attention_png or as_json)
    if checkpoint is None:
        raise PredictError("name the model with --checkpoint PATH (or --run RUN with --manifest/--folder)")

    if attention_png is not None:
        from ..fuse.report.plots import figure_format

        figure_format(attention_png)  # before the encoders load: a bad name costs nothing
    result = predict_one(
        checkpoint,
        audio_path,
        text,
        audio_encoder=audio_encoder,
        text_encoder=text_encoder,
        device=device,
        attention=attention_png is not None,
        force=force,
        **({} if max_duration is None else {"max_duration": max_duration}),
        asr=asr_spec,
    )
    if attention_png is not None:
        try:
            draw_attention(result, attention_png)
        except OSError as e:  # the figure's folder is missing or not writable
            raise click.ClickException(f"cannot write {attention_png}: {e.strerror or e}") from None
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "attention_png": attention_png}, indent=1))
        return
    if result.asr is not None:
        click.echo(f"transcript ({result.asr['name']}): {result.transcript}")
    if result.normalisation:
        click.echo(f"normalisation: {result.normalisation}")
    if result.label:  # a model of task attributes has no trained classes
        click.echo(f"label: {result.label}")
        for name, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {name:<12} {p:7.4f}  {'#' * round(40 * p)}")
    if result.attributes:
        click.echo("attributes: " + ", ".join(f"{k} {v:.2f}" for k, v in result.attributes.items()))
    if attention_png is not None:
        click.echo(f"attention: {attention_png}")
