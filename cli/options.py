"""Options shared by ``ksr train`` and ``ksr ablate``; the model settings are generated from
``ksr.fuse.model.config`` (one flag per ModelConfig field, with its help and its rules)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


#: ``--force`` of the commands that write a file the user names (prepare --out, compare --json).
force_option = click.option("--force", is_flag=True, help="Replace the output file if it exists.")


def check_out(out: str, force: bool) -> None:
    """Before any work: refuse to replace ``out`` without ``--force``, in one line."""
    from ..common.files import check_replace

    check_replace(out, force)


def size_option():
    """``--size``: a named model size (``fuse.model.config.MODEL_SIZES``)."""
    return click.option(
        "--size",
        type=LazyChoice(lambda: list(_model_sizes())),
        default=None,
        help="Model size: default = the public code's model (layers 5,3,2, 8 heads, FFN 256/512); small = make "
        "demo's (layers 1,1,1, 4 heads, FFN 64, no attention dropout), minutes per fold on a 2-core CPU. "
        "Model options typed beside it win. With --recipe ksr, larger models get a scaled learning rate.",
    )


def training_options(f):
    """The options ksr train and ksr ablate share: the data and protocol, the recipe, the device,
    then the model settings (in that order in --help)."""
    f = model_options(f)
    for option in reversed([*data_options(), *recipe_options(), *device_options(), size_option()]):
        f = option(f)
    return f


class LazyChoice(click.Choice):
    """A Choice whose values a function returns when first needed (parsing, the command's
    --help): the modules that define them import torch, which ``ksr --help`` must not pay for."""

    def __init__(self, values: Callable[[], Sequence[str]]) -> None:
        self._values = values
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> Sequence[str]:
        return tuple(self._values())

    @choices.setter
    def choices(self, _: Sequence[str]) -> None:  # click's __init__ assigns them
        pass


def _protocols():
    from ..fuse.train.folds import PROTOCOLS

    return PROTOCOLS


def _selections():
    from ..fuse.train.runs import SELECTIONS

    return SELECTIONS


def _metrics():
    from ..fuse.train.metrics import ATTRIBUTE_METRIC, METRICS

    return (*METRICS, ATTRIBUTE_METRIC)


def _recipes():
    from ..fuse.train import recipes

    return recipes


def _validations():
    from ..fuse.train.folds import VALIDATIONS

    return VALIDATIONS


def _model_sizes():
    from ..fuse.model.config import MODEL_SIZES

    return MODEL_SIZES


def _losses():
    from ..fuse.train.losses import LOSSES

    return LOSSES


def _samplers():
    from ..fuse.train.sampling import SAMPLERS

    return SAMPLERS


def _cache_modes():
    from ..cache.modes import MODES

    return MODES


def data_options() -> list:
    """The cache, and which of its utterances train, validate and test."""
    return [
        click.option(
            "--cache",
            "cache_dir",
            default=None,
            type=click.Path(exists=True, file_okay=False),
            help="The feature cache to train on (with --resume: default the one the run recorded).",
        ),
        click.option(
            "--protocol",
            type=LazyChoice(_protocols),
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
            type=LazyChoice(_selections),
            default="valid",
            show_default=True,
            help="Which epoch's model is kept. valid: the epoch with the best validation score (the official valid split under --protocol split); test: the epoch with the best score on the TEST set, as the public code does (reports are marked; refused under --protocol split); last: the last epoch, no selection (the validation set is still held out and scored).",
        ),
        click.option(
            "--metric",
            type=LazyChoice(_metrics),
            default=None,
            help="Selection metric (default wa; ccc, the mean CCC over the attributes, under --task attributes).",
        ),
        click.option(
            "--validation",
            type=LazyChoice(_validations),
            default="utterances",
            show_default=True,
            help="Where session folds validate: utterances = a share of the training speakers' utterances (it "
            "cannot see a speaker shift: a new voice can score far below it); speaker = one training speaker held "
            "out whole, as a new voice would be.",
        ),
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

    return [
        click.option(
            "--recipe",
            "recipe_name",
            type=LazyChoice(lambda: list(_recipes().PRESETS)),
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
        click.option(
            "--schedule",
            type=LazyChoice(lambda: _recipes().SCHEDULES),
            default=None,
            help="Override the recipe's schedule.",
        ),
        click.option(
            "--optimizer",
            type=LazyChoice(lambda: _recipes().OPTIMIZERS),
            default=None,
            help="Override the recipe's optimizer (the paper and official recipes use SGD, the ksr recipe AdamW).",
        ),
        click.option(
            "--warmup-epochs",
            type=click.FloatRange(0),
            default=None,
            help="Override the recipe's linear warm-up, in epochs (stepped per batch; 0 = none).",
        ),
        *imbalance_options(),
    ]


def imbalance_options() -> list:
    """The class loss and the batches' order (recipe settings; docs/learning.md, "Imbalanced classes")."""
    return [
        click.option(
            "--loss",
            type=LazyChoice(_losses),
            default=None,
            help="The class loss (default ce, the public code's). weighted-ce: cross-entropy weighted by the "
            "training fold's inverse class frequencies; focal: focal loss (--focal-gamma); weighted-focal: both. "
            "For imbalanced classes, with --metric macro_f1 (docs/learning.md).",
        ),
        click.option(
            "--focal-gamma",
            type=click.FloatRange(0),
            default=None,
            help="The focal losses' gamma (default 2, fuse.train.losses.DEFAULT_FOCAL_GAMMA; 0 = cross-entropy).",
        ),
        click.option(
            "--sampler",
            type=LazyChoice(_samplers),
            default=None,
            help="The order of the training utterances (default shuffle: each once per epoch). balanced: each "
            "batch drawn with equal class probability, as many draws per epoch (rare classes repeat).",
        ),
    ]


def device_options() -> list:
    """Where training runs, how the cache is read, and resuming."""
    from ..cache.modes import MODE_HELP  # torch-free at import: ksr --help stays fast

    return [
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, or auto."),
        click.option(
            "--amp/--no-amp", default=True, show_default=True, help="bfloat16 autocast on GPU (ignored on CPU)."
        ),
        click.option(
            "--cache-mode",
            type=LazyChoice(_cache_modes),
            default="auto",
            show_default=True,
            help=MODE_HELP,
        ),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its last finished epoch."),
    ]


def setup_training(o: dict, run_dir: str | None = None, progress: bool | None = None):
    """(setup, folds, seeds) from the shared training options; model settings are checked before
    a large cache is read. ``--resume`` continues what the run recorded (``resumed_options``)."""
    from click.core import ParameterSource

    from ..fuse.model.config import MODEL_SIZES, attention_layers, cli_settings
    from ..fuse.report.experiment import open_training
    from ..fuse.train.losses import is_focal
    from ..fuse.train.recipes import PRESET_MODEL_SETTINGS, PRESET_NOTES, recipe, scaled_for_model
    from ..fuse.train.runs import RECIPE_OPTIONS, RUN_OPTIONS, resumed_options

    ctx = click.get_current_context()
    typed = {name for name in o if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    o = {**o, "seeds": _csv(int, o["seeds"], "integer seeds"), "folds": list(dict.fromkeys(o["folds"])) or None}
    twice = [s for i, s in enumerate(o["seeds"] or []) if s in o["seeds"][:i]]
    if twice:  # the second copy would find the first's folds and stop with "pass --resume"
        raise click.BadParameter(f"seed {twice[0]} is listed twice", param_hint="'--seeds'")
    if o["resume"] and run_dir:
        o = resumed_options(Path(run_dir), o, typed)
    if o["cache_dir"] is None:
        raise click.UsageError("--cache is needed (only --resume of a run that recorded its cache can leave it out)")
    r = recipe(o["recipe_name"], **{k: o[k] for k in RECIPE_OPTIONS})
    if "focal_gamma" in typed and not is_focal(r.loss):
        raise click.BadParameter(f"applies to --loss focal or weighted-focal, not {r.loss}", param_hint="--focal-gamma")
    changes = {
        **PRESET_MODEL_SETTINGS.get(o["recipe_name"], {}),
        **MODEL_SIZES[o.get("size") or "default"],
        **{f.name: o[f.name] for f in cli_settings() if o[f.name] is not None},
    }

    setup = open_training(
        o["cache_dir"],
        r,
        changes,
        **{k: o[k] for k in RUN_OPTIONS},
        device=o["device"],
        cache_mode=o["cache_mode"],
        progress=progress,
    )
    # A resumed run's recorded lr and warm-up are in ``o`` already: kept, never scaled twice.
    kept = {k for k in ("lr", "warmup_epochs") if o[k] is not None}
    layers = attention_layers(setup.spec.model) if setup.spec.model.architecture == "ks-transformer" else 0
    r, scaling = scaled_for_model(r, layers, kept)
    setup.spec.recipe = r
    if scaling and setup.ranks.main:
        click.echo(scaling, err=True)
    if o["recipe_name"] in PRESET_NOTES and setup.ranks.main:
        click.echo(PRESET_NOTES[o["recipe_name"]], err=True)
    if o["select"] == "test" and setup.spec.protocol != "split" and setup.ranks.main:  # split refuses it
        click.echo(
            "warning: --select test picks each fold's epoch on its TEST set (the public code's protocol); "
            "reports are marked as such",
            err=True,
        )
    return setup, o["folds"], o["seeds"] or [r.seed]
