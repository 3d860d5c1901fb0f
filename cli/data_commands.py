"""The data commands: prepare, extract, encoders, cache."""

from __future__ import annotations

import click

from ..cache.schema import DTYPES as STORAGE_DTYPES
from ..common.constants import MAX_AUDIO_FRAMES, MAX_TEXT_TOKENS
from . import main
from .options import check_out, force_option

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

    from ..cache import cache_info, format_info

    info = cache_info(cache_dir)
    click.echo(json.dumps(info, indent=1) if as_json else format_info(info))


@cache_group.command("verify")
@click.argument("cache_dir", type=click.Path(file_okay=False))
@click.option(
    "--no-checksums",
    is_flag=True,
    help="Skip the SHA-256 of every shard and the scan of every feature value for NaN or inf "
    "(sizes, schema and metadata are still checked).",
)
def cache_verify_cmd(cache_dir: str, no_checksums: bool) -> None:
    """Check CACHE_DIR: indexes, shard files, sizes, checksums, schema, metadata, and NaN or
    inf in the features.

    Prints every problem, one line each naming the file, and exits with status 1 if there
    is any.
    """
    from ..cache import verify_cache

    report = verify_cache(cache_dir, checksums=not no_checksums)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for problem in report.problems:
        click.echo(f"error: {problem}", err=True)
    if report.problems:
        raise SystemExit(1)
    hashed = f", {report.bytes_hashed / 1e6:,.1f} MB hashed" if not no_checksums else ", checksums skipped"
    click.echo(f"ok: {cache_dir}: {report.utterances} utterances in {report.shards} shards{hashed}")


@cache_group.command("repair")
@click.argument("cache_dir", type=click.Path(file_okay=False))
@click.option("--dry-run", is_flag=True, help="Say what would be removed; change nothing.")
def cache_repair_cmd(cache_dir: str, dry_run: bool) -> None:
    """Remove the duplicate copies of utterances stored more than once in CACHE_DIR (two
    extractions that wrote it at the same time): the first copy of each is kept, shards holding
    only copies are dropped, the others rewritten without them. Safe to kill and run again.

    Refuses a cache that is being written, or that has any other problem (see `ksr cache verify`).
    """
    from ..cache.repair import repair_cache

    click.echo(repair_cache(cache_dir, dry_run=dry_run).format(dry_run))


# --- corpus and extraction commands (ksr.extract) --------------------------------------------


@main.group("prepare")
def prepare_cmd() -> None:
    """Write or check a corpus manifest: one CSV row per utterance (docs/manifest.md)."""


@prepare_cmd.command("iemocap")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The manifest CSV to write.")
@force_option
def prepare_iemocap_cmd(root: str, out: str, force: bool) -> None:
    """Index IEMOCAP_full_release (ROOT) for the 4-class task: ang, hap (+exc), neu, sad.

    Prints the counts per session and class, what was skipped as not data, and warnings (a
    complete release gives 5,531 utterances).
    """
    from ..extract.corpora.iemocap import format_report, prepare_iemocap
    from ..extract.corpora.manifest import write_manifest

    check_out(out, force)
    report = prepare_iemocap(root)
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
    from ..extract.corpora.manifest import check_manifest, read_manifest

    summary, errors = check_manifest(read_manifest(manifest, strict=False))
    for line in summary:
        click.echo(line)
    for line in errors[:-1]:
        click.echo(f"error: {line}", err=True)
    if errors:
        raise click.ClickException(errors[-1])


@prepare_cmd.command("demo")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Same seed, same corpus (byte for byte).")
@click.option(
    "--per-speaker",
    default=32,
    show_default=True,
    type=click.IntRange(min=4),
    help="Utterances per speaker (a multiple of 4); 10 speakers.",
)
def prepare_demo_cmd(out: str, seed: int, per_speaker: int) -> None:
    """Write the built-in demo corpus into OUT: OUT/wav/*.wav and OUT/manifest.csv."""
    from ..extract.corpora.demo import make_demo_corpus

    click.echo(f"wrote the demo corpus: {make_demo_corpus(out, seed=seed, per_speaker=per_speaker)}")


@main.command("encoders")
@click.argument("spec", required=False)
@click.option(
    "--tiny-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the built-in tiny encoders are kept (default ~/.cache/ksr/tiny).",
)
def encoders_cmd(spec: str | None, tiny_dir: str | None) -> None:
    """List every kind of encoder (spec, dims, frame rate, what); with SPEC, load it and print
    what it declares.

    Examples: tiny-audio, paper-text, fbank, hf:facebook/wav2vec2-base@layer=6, hf:/models/my-wavlm.
    """
    from ..extract.encoders import load_encoder
    from ..extract.encoders.kinds import encoder_kinds, format_kinds

    if spec is None:
        click.echo(format_kinds(encoder_kinds()))
        return
    for key, value in load_encoder(spec, tiny_root=tiny_dir).describe().items():
        click.echo(f"{key:<12} {value}")


@main.command("extract")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="The cache directory (created; a rerun continues it).",
)
@click.option(
    "--audio-encoder",
    default="paper-audio",
    show_default=True,
    help="Audio encoder spec (see `ksr encoders`); paper-audio = wav2vec 1.0 large from $KSR_WAV2VEC_LARGE.",
)
@click.option(
    "--text-encoder",
    default="paper-text",
    show_default=True,
    help="Text encoder spec; paper-text = RoBERTa large, last layer.",
)
@click.option(
    "--classes",
    default=None,
    help="Class order, comma-separated (default: ang,neu,hap,sad for the 4-class IEMOCAP labels, else the manifest's labels sorted); other labels are skipped.",
)
@click.option("--corpus", default=None, help="Corpus name in the cache (default: from the manifest path).")
@click.option(
    "--dtype",
    type=click.Choice(STORAGE_DTYPES),
    default="float16",
    show_default=True,
    help="Storage dtype of the features.",
)
@click.option(
    "--batch-seconds",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Padded audio per batch, in seconds (default 10 on CPU, 120 on GPU).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (cuda in float16 when present, else cpu), cpu, cuda or cuda:N.",
)
@click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Utterances per shard file (default 512).")
@click.option(
    "--max-audio-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Encode only the first this-many seconds of each utterance (default: all; recorded in the cache; "
    "docs/encoders.md says how far each encoder's features move).",
)
@click.option(
    "--max-duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Refuse (one line in the errors file) any file or segment whose header gives more seconds "
    "than this (default 600), before decoding it: one huge file cannot take all memory. Not a cut "
    "(see --max-audio-seconds); 'inf' lifts the limit.",
)
@click.option(
    "--max-audio-len",
    type=click.IntRange(min=1),
    default=MAX_AUDIO_FRAMES,
    show_default=True,
    help="Audio frames kept per utterance in the cache (cut or zero-padded; the paper's 460).",
)
@click.option(
    "--max-text-len",
    type=click.IntRange(min=1),
    default=MAX_TEXT_TOKENS,
    show_default=True,
    help="Text tokens kept per utterance in the cache (the paper's 20).",
)
@click.option(
    "--text-column",
    default="text",
    show_default=True,
    help="The manifest column the transcripts are taken from: text (human), or a machine transcript "
    "such as the asr_text of `ksr transcribe` (recorded in the cache).",
)
@click.option(
    "--attributes",
    default=None,
    metavar="NAMES|none",
    help="The manifest's numeric attribute columns stored in the cache, comma-separated (default: those of "
    "activation, valence, dominance the manifest has; none: no attributes, e.g. to continue a cache made "
    "before ksr stored them). Values are checked against the corpus's scale (IEMOCAP 1-5, MSP-Podcast 1-7).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract_cmd(
    manifest,
    out,
    audio_encoder,
    text_encoder,
    classes,
    corpus,
    dtype,
    batch_seconds,
    device,
    shard_size,
    max_audio_seconds,
    max_duration,
    max_audio_len,
    max_text_len,
    text_column,
    attributes,
    no_progress,
) -> None:
    """Encode every utterance of MANIFEST with frozen encoders into a feature cache.

    Resumable: a rerun skips what the cache holds. Utterances that cannot be used get one line
    each in OUT/errors-<writer>.tsv and are counted in the summary. Under torchrun
    (--nproc-per-node N) each rank extracts its share into its own shards.
    """
    from ..common.optional import require_audio

    require_audio("ksr extract")  # before any work: one line naming the extra
    from ..common import ranks_from_env
    from ..extract.audio_errors import MAX_DURATION_S
    from ..extract.pipeline import DEFAULT_SHARD_SIZE, extract_corpus

    class_list = None
    if classes is not None:
        class_list = [c.strip() for c in classes.split(",") if c.strip()]
        if not class_list or len(set(class_list)) != len(class_list):
            raise click.BadParameter(
                f"expected distinct comma-separated names, got {classes!r}", param_hint="--classes"
            )
    attribute_list = None
    if attributes is not None:
        attribute_list = [] if attributes.strip() == "none" else [a.strip() for a in attributes.split(",") if a.strip()]
    ranks = ranks_from_env()
    summary = extract_corpus(
        manifest,
        out,
        audio_encoder,
        text_encoder,
        classes=class_list,
        corpus=corpus,
        dtype=dtype,
        batch_seconds=batch_seconds,
        shard_size=shard_size or DEFAULT_SHARD_SIZE,
        device=device,
        max_audio_seconds=max_audio_seconds,
        max_duration=MAX_DURATION_S if max_duration is None else max_duration,
        max_audio_len=max_audio_len,
        max_text_len=max_text_len,
        text_column=text_column,
        progress=not no_progress,
        ranks=ranks,
        attributes=attribute_list,
    )
    if ranks.main:
        click.echo(summary.format())
        for warning in summary.warnings():
            click.echo(f"warning: {warning}", err=True)
