"""``ksr prepare msp-podcast`` and ``ksr prepare meld``: corpora with official splits.

Their manifests carry a ``split`` column and an empty ``session`` (docs/corpora.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from .data_commands import prepare_cmd
from .options import check_out, force_option

#: The manifest's optional columns, in this order, for each corpus (``split``, a column of the
#: manifest's own, comes after the required ones).
MSP_COLUMNS = ("raw_label", "activation", "valence", "dominance")
MELD_COLUMNS = (
    "raw_label",
    "sentiment",
    "dialogue_id",
    "utterance_id",
    "season",
    "episode",
    "episode_start",
    "episode_end",
)


def _write(report, out: str, columns) -> None:
    from ..extract.corpora.manifest import write_manifest
    from ..extract.corpora.splits import format_split_report

    click.echo(format_split_report(report))
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not report.rows:
        raise click.ClickException(f"no usable rows found under {report.root}")
    if Path(out).resolve().is_relative_to(Path(report.root).resolve()):
        raise click.ClickException(
            f"--out {out} is inside the release folder {report.root}: write the manifest elsewhere"
        )
    write_manifest(out, report.rows, extra_columns=columns)
    click.echo(f"wrote {report.total} rows to {out}")


@prepare_cmd.command("msp-podcast")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The manifest CSV to write.")
@click.option(
    "--task",
    type=click.Choice(["4class", "8class"]),
    default="4class",
    show_default=True,
    help="4class: ang, hap, neu, sad (A H N S); 8class adds sur, fea, dis, con (U F D C).",
)
@force_option
def prepare_msp_podcast_cmd(root: str, out: str, task: str, force: bool) -> None:
    """Index an MSP-Podcast release (ROOT, with Audios/ and Labels/) with its official splits:
    Train, Development (or Validation), Test1, Test2 as train, valid, test1, test2.

    Prints the counts per split and class, and what was left out: O and X labels, Test3 (no
    public labels), turns without their wav; turns without a transcript get an empty text.
    """
    from ..extract.corpora.msp_podcast import prepare_msp_podcast

    check_out(out, force)
    _write(prepare_msp_podcast(root, task), out, MSP_COLUMNS)


@prepare_cmd.command("meld")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The manifest CSV to write.")
@force_option
def prepare_meld_cmd(root: str, out: str, force: bool) -> None:
    """Index a MELD release (ROOT: the three *_sent_emo.csv files and the mp4 clip folders) for
    its 7 emotions, with its official splits train, valid (dev), test.

    Prints the counts per split and class, and the rows left out (a missing clip). The clips'
    audio is decoded with PyAV when extracting: pip install 'ksr[video]'.
    """
    from ..extract.corpora.meld import prepare_meld

    check_out(out, force)
    _write(prepare_meld(root), out, MELD_COLUMNS)
    if importlib.util.find_spec("av") is None:
        click.echo(
            "warning: PyAV is not installed: ksr extract cannot decode the mp4 clips without it "
            "(pip install 'ksr[video]')",
            err=True,
        )
