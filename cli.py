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
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {out_pt}: {describe(model.cfg)}, {heads} heads, keep rate {keep_rate}")




@main.command("demo")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False), help="Where the demo writes.")
def demo_cmd(out: str) -> None:
    """Run what ksr has today end to end on built-in data, without downloads.

    Builds the KS-Transformer at the public implementation's default size, runs it on random
    padded features shaped like a cache's (460 audio frames, 20 text tokens), writes a ksr
    checkpoint, and reloads it. The full corpus -> cache -> train -> report demo follows the
    extraction and training stages.
    """
    import time
    from pathlib import Path

    import torch

    from ksr.fuse import KSTransformer, ModelConfig, count_parameters, load_model, save_checkpoint

    torch.manual_seed(0)
    model = KSTransformer(ModelConfig()).eval()
    n = count_parameters(model)
    click.echo(f"KS-Transformer, default config: {n['trainable']:,} trainable of {n['total']:,} elements")
    audio, text = torch.randn(2, 460, 512), torch.randn(2, 20, 1024)
    audio_mask = torch.arange(460)[None, :] >= torch.tensor([[460], [301]])
    text_mask = torch.arange(20)[None, :] >= torch.tensor([[20], [9]])
    start = time.perf_counter()
    with torch.no_grad():
        probs = model(audio, text, audio_mask, text_mask).softmax(-1)
    click.echo(f"forward on 2 padded utterances: {time.perf_counter() - start:.2f} s; class probabilities:")
    for row in probs.tolist():
        click.echo("  " + "  ".join(f"{p:.3f}" for p in row))
    path = save_checkpoint(Path(out) / "untrained.pt", model, {"note": "ksr demo, random weights"})
    with torch.no_grad():
        same = torch.equal(load_model(path)(audio, text, audio_mask, text_mask).softmax(-1), probs)
    click.echo(f"checkpoint {path} reloads with identical outputs: {same}")


# --- cache commands (ksr.cache) --------------------------------------------------------------


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
    """List the encoder specs; with SPEC, load it and print what it declares.

    Examples: tiny-audio, paper-text, hf:facebook/wav2vec2-base@layer=6, hf:/models/my-wavlm.
    """
    from ksr.extract.encoders import EncoderError, available_specs, load_encoder

    if spec is None:
        for name, what in available_specs():
            click.echo(f"{name:<48} {what}")
        return
    try:
        encoder = load_encoder(spec, tiny_root=tiny_dir)
    except EncoderError as e:
        raise click.ClickException(str(e)) from None
    for key, value in encoder.describe().items():
        click.echo(f"{key:<12} {value}")


if __name__ == "__main__":
    main()
