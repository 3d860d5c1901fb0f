"""``ksr export``: a trained model as a file other runtimes load (ONNX; docs/export.md)."""

from __future__ import annotations

import click

from . import main


@main.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--onnx",
    "onnx_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the ONNX file.",
)
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Run the file in onnxruntime on random padded inputs and print its largest logit difference to torch.",
)
def export_cmd(checkpoint: str, onnx_path: str, force: bool, check: bool) -> None:
    """Export a checkpoint's model to ONNX (dynamic batch, the cache's fixed lengths).

    Inputs: audio float32 (batch, Ta, Da), text float32 (batch, Tt, Dt), audio_padding_mask and
    text_padding_mask bool (True = padded), with Ta, Tt the training cache's lengths (460 and 20
    for the paper's); output: logits (batch, classes). The class names, the cache's encoder record
    and the model config are in the file's metadata. Needs pip install 'ksr[export]'.
    """
    from ..fuse.report.export import export_onnx

    result = export_onnx(checkpoint, onnx_path, force=force, check=check)
    shapes = ", ".join(f"{name} {dtype} ({', '.join(str(d) for d in shape)})" for name, dtype, shape in result.inputs)
    click.echo(
        f"wrote {result.path} ({result.nbytes / 2**20:.1f} MiB): {shapes} -> logits over {', '.join(result.classes)}"
    )
    if result.audio_normalisation:
        click.echo(f"note: {result.audio_normalisation} (also in the file's metadata, ksr.audio_normalisation)")
    if result.max_abs_diff is not None:
        click.echo(
            f"check: onnxruntime vs torch on 3 random padded utterances, max |logit difference| {result.max_abs_diff:.2e}"
        )
