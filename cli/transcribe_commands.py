"""``ksr transcribe``: machine transcripts for a manifest (``ksr.extract.asr.transcribe``)."""

from __future__ import annotations

import click

from . import main


@main.command("transcribe")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option(
    "--asr",
    "asr_spec",
    required=True,
    help="The speech-recognition model: hf:<hub id or folder of a Whisper checkpoint>, optionally "
    "@language=<code> (e.g. hf:openai/whisper-large-v3@language=en); see docs/transcripts.md.",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False),
    help="The manifest to write: MANIFEST plus the machine-transcript column (a rerun after a kill continues it).",
)
@click.option(
    "--column",
    default="asr_text",
    show_default=True,
    help="Name of the machine-transcript column (the human transcript stays in text).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Utterances per batch.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (cuda in float16 when present, else cpu), cpu, cuda or cuda:N.",
)
@click.option(
    "--max-duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Refuse (one line in the errors file) any file or segment whose header gives more seconds "
    "than this (default 600), before decoding it; 'inf' lifts the limit.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def transcribe_cmd(manifest, asr_spec, out, column, batch_size, device, max_duration, no_progress) -> None:
    """Add a machine transcript of every utterance of MANIFEST, written to --out.

    Every column of MANIFEST is kept as it is (the human transcript in text, empty where there
    is none); the ASR model and its checkpoint digest go to OUT.asr.json with the word error
    rate against the human text; rows without a machine transcript get one line each in
    OUT.errors.tsv. Then `ksr extract OUT --text-column asr_text` makes a cache from the
    machine transcripts.
    """
    from ..common.optional import require_audio

    require_audio("ksr transcribe")  # before any work: one line naming the extra
    from ..extract.asr.transcribe import transcribe_manifest
    from ..extract.audio_errors import MAX_DURATION_S

    summary = transcribe_manifest(
        manifest,
        out,
        asr_spec,
        column=column,
        batch_size=batch_size,
        device=device,
        max_duration=MAX_DURATION_S if max_duration is None else max_duration,
        progress=not no_progress,
    )
    click.echo(summary.format())
