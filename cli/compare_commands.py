"""``ksr compare``: paired statistics between runs on the same cache and test utterances."""

from __future__ import annotations

import click

from . import main
from .options import check_out, force_option


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Also write the result as JSON here."
)
@click.option(
    "--resamples",
    default=None,
    type=click.IntRange(min=1),
    help="Bootstrap resamples of the test utterances (default 1000).",
)
@click.option(
    "--seed",
    "boot_seed",
    default=None,
    type=click.IntRange(min=0),
    help="The bootstrap's seed, a non-negative integer (default: the one reports use).",
)
@click.option(
    "--evaluate",
    is_flag=True,
    help="Evaluate the checkpoints again instead of reading RUN/report_predictions.csv.",
)
@click.option(
    "--cache",
    "cache_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Cache to evaluate on when a run has no saved predictions (default: each run's training cache).",
)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto (when evaluating).")
@force_option
def compare_cmd(runs, json_path, resamples, boot_seed, evaluate, cache_dir, device, force) -> None:
    """Compare RUN_B (and more) with RUN_A on the same test utterances.

    For each run after the first: the difference of WA, UA, macro and weighted F1 with a paired
    bootstrap 95% interval and p-value, McNemar's test on the pooled predictions, and, when both
    runs have several seeds, t-tests over seeds (and seed-fold pairs, except under the split
    protocol). Runs that both learn attributes (--task attributes or both) also get the difference
    of their CCCs (each attribute and the mean) with a paired bootstrap 95% interval and p-value.
    Runs evaluated on different caches or test utterances are refused. An unfinished
    run, or one that chose its epochs on the test set, is compared with a warning. Prints Markdown.
    """
    from pathlib import Path

    from ..common import write_json
    from ..fuse.report.compare import CompareError, compare_markdown, compare_runs, load_run_predictions
    from ..fuse.report.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, Bootstrap

    if len(runs) < 2:
        raise CompareError("compare needs at least two runs: RUN_A RUN_B [RUN_C ...]")
    if json_path:  # before any work: a refusal costs nothing
        check_out(json_path, force)
    boot = Bootstrap(resamples or DEFAULT_RESAMPLES, DEFAULT_SEED if boot_seed is None else boot_seed)
    loaded = [load_run_predictions(Path(r), cache_dir, device, evaluate) for r in runs]
    result = compare_runs(loaded, boot)
    if json_path:
        write_json(json_path, result)
    click.echo(compare_markdown(result), nl=False)
