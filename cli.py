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




# --- cache commands (ksr.cache) --------------------------------------------------------------


# --- corpus and extraction commands (ksr.extract) --------------------------------------------


if __name__ == "__main__":
    main()
