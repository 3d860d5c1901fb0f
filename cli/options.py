"""Options shared by ``ksr train`` and ``ksr ablate``; the model settings are generated from
``ksr.fuse.model.config`` (one flag per ModelConfig field, with its help and its rules)."""

from __future__ import annotations

from pathlib import Path

import click


def _csv(kind, text: str | None, what: str) -> list | None:
    """Comma-separated values of one type; an empty or malformed list is refused."""
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise click.BadParameter(f"expected comma-separated {what}, got {text!r}")
    return values


def model_options(f):
    """One option per ModelConfig setting, generated from the dataclass (its help and its rules)."""
    from ..fuse.model.config import cli_settings, setting_problem

    def check(field):
        def callback(ctx, param, value):
            if value is None:
                return None
            if isinstance(field.default, tuple):
                value = tuple(_csv(int, value, "integers"))
                if len(value) != len(field.default):
                    raise click.BadParameter(f"expected {len(field.default)} comma-separated integers, got {value}")
            problem = setting_problem(field, value)
            if problem:
                raise click.BadParameter(problem)
            return value

        return callback

    for field in reversed(cli_settings()):
        rule = field.metadata["cli"]
        flag = rule["flag"] or "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            decls, kind = [f"{flag}/--no-{flag[2:]}", field.name], None
        else:
            decls = [flag, field.name]
            kind = (
                click.Choice(rule["choices"])
                if rule["choices"]
                else (str if isinstance(field.default, tuple) else type(field.default))
            )
        f = click.option(*decls, type=kind, default=None, callback=check(field), help=rule["help"])(f)
    return f


#: ``--bootstrap N`` of the commands that write reports (train, eval).
bootstrap_option = click.option(
    "--bootstrap",
    "resamples",
    default=1000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bootstrap resamples for the report's 95% intervals (0: no intervals; docs/reports.md).",
)


def training_options(f):
    """The options ksr train and ksr ablate share: the data and protocol, the recipe, the device,
    then the model settings (in that order in --help)."""
    f = model_options(f)
    for option in reversed([*data_options(), *recipe_options(), *device_options()]):
        f = option(f)
    return f


def data_options() -> list:
    """The cache, and which of its utterances train, validate and test."""
    from ..fuse.train.folds import PROTOCOLS
    from ..fuse.train.metrics import METRICS
    from ..fuse.train.runs import SELECTIONS

    return [
        click.option(
            "--cache",
            "cache_dir",
            required=True,
            type=click.Path(exists=True, file_okay=False),
            help="The feature cache to train on.",
        ),
        click.option(
            "--protocol",
            type=click.Choice(PROTOCOLS),
            default="session",
            show_default=True,
            help="session: leave-one-session-out (fold k tests Session k); speaker: leave-one-speaker-out; split: the cache's official split (train, epochs chosen on valid, tested on each test split; one model per seed, no --fold).",
        ),
        click.option(
            "--fold",
            "folds",
            multiple=True,
            type=click.IntRange(min=1),
            help="Train only these folds (repeatable); default all.",
        ),
        click.option("--seeds", default=None, help="Comma-separated seeds (default: the recipe's, 123)."),
        click.option(
            "--select",
            type=click.Choice(SELECTIONS),
            default="valid",
            show_default=True,
            help="Which epoch's model is kept. valid: the epoch with the best validation score (the official valid split under --protocol split); test: the epoch with the best score on the TEST set, as the public code does (reports are marked; refused under --protocol split); last: the last epoch, no selection (the validation set is still held out and scored).",
        ),
        click.option("--metric", type=click.Choice(METRICS), default="wa", show_default=True, help="Selection metric."),
        click.option(
            "--val-fraction",
            default=0.1,
            show_default=True,
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
            help="Share of each class of the training sessions held out for validation.",
        ),
    ]


def recipe_options() -> list:
    """The recipe preset and its overrides."""
    from ..fuse.train.recipes import OPTIMIZERS, PRESETS, SCHEDULES

    return [
        click.option(
            "--recipe",
            "recipe_name",
            type=click.Choice(list(PRESETS)),
            default="paper",
            show_default=True,
            help="Preset: paper = SGD lr 5e-4 halved every 30 epochs; official = the public code's SGD momentum 0.9 + cosine; ksr = AdamW 4e-3, warm-up, cosine, 24 epochs, standardised inputs (docs/learning.md).",
        ),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe's epochs."),
        click.option(
            "--lr",
            type=click.FloatRange(0, 10, min_open=True),
            default=None,
            help="Override the recipe's learning rate.",
        ),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=None, help="Override the recipe's batch size."
        ),
        click.option(
            "--momentum",
            type=click.FloatRange(0, 1, max_open=True),
            default=None,
            help="Override the recipe's SGD momentum.",
        ),
        click.option("--schedule", type=click.Choice(SCHEDULES), default=None, help="Override the recipe's schedule."),
        click.option(
            "--optimizer",
            type=click.Choice(OPTIMIZERS),
            default=None,
            help="Override the recipe's optimizer (the paper and official recipes use SGD, the ksr recipe AdamW).",
        ),
        click.option(
            "--warmup-epochs",
            type=click.FloatRange(0),
            default=None,
            help="Override the recipe's linear warm-up, in epochs (stepped per batch; 0 = none).",
        ),
    ]


def device_options() -> list:
    """Where training runs, how the cache is read, and resuming."""
    from ..cache.modes import MODE_HELP, MODES

    return [
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto."),
        click.option(
            "--amp/--no-amp", default=True, show_default=True, help="bfloat16 autocast on GPU (ignored on CPU)."
        ),
        click.option(
            "--cache-mode",
            type=click.Choice(MODES),
            default="auto",
            show_default=True,
            help=MODE_HELP,
        ),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished epoch."),
    ]


def setup_training(o: dict, run_dir: str | None = None):
    """(setup, folds, seeds) from the shared training options; model settings are checked before
    a large cache is read. ``--resume`` continues what the run recorded (``resumed_options``)."""
    from click.core import ParameterSource

    from ..fuse.model.config import cli_settings
    from ..fuse.report.experiment import open_training
    from ..fuse.train.recipes import PRESET_MODEL_SETTINGS, PRESET_NOTES, recipe
    from ..fuse.train.runs import RECIPE_OPTIONS, RUN_OPTIONS, resumed_options

    ctx = click.get_current_context()
    typed = {name for name in o if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    o = {**o, "seeds": _csv(int, o["seeds"], "integer seeds"), "folds": list(o["folds"]) or None}
    if o["resume"] and run_dir:
        o = resumed_options(Path(run_dir), o, typed)
    r = recipe(o["recipe_name"], **{k: o[k] for k in RECIPE_OPTIONS})
    changes = {
        **PRESET_MODEL_SETTINGS.get(o["recipe_name"], {}),
        **{f.name: o[f.name] for f in cli_settings() if o[f.name] is not None},
    }
    setup = open_training(
        o["cache_dir"],
        r,
        changes,
        **{k: o[k] for k in RUN_OPTIONS},
        device=o["device"],
        cache_mode=o["cache_mode"],
    )
    if o["recipe_name"] in PRESET_NOTES and setup.ranks.main:
        click.echo(PRESET_NOTES[o["recipe_name"]], err=True)
    if o["select"] == "test" and setup.spec.protocol != "split" and setup.ranks.main:  # split refuses it
        click.echo(
            "warning: --select test picks each fold's epoch on its TEST set (the public code's protocol); "
            "reports are marked as such",
            err=True,
        )
    return setup, o["folds"], o["seeds"] or [r.seed]
