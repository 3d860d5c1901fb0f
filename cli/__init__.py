"""The ``ksr`` command: each command parses its options, calls one function of a stage, prints.

Commands live by stage, one module per group:

- ``data_commands``: prepare (IEMOCAP, demo, check), extract, encoders, cache.
- ``corpus_commands``: prepare msp-podcast and prepare meld (official splits).
- ``transcribe_commands``: transcribe (machine transcripts).
- ``model_commands``: train, ablate, eval, predict, demo, convert-official.
- ``compare_commands``: compare (runs against runs).
- ``export_commands``: export (ONNX).
- ``options``: the training options, the model settings among them generated from
  ``ksr.fuse.model.config``.
- ``__main__``: ``python -m ksr.cli``.

Expected failures (``KsrError`` and its kin: bad input, damaged files, missing devices) end as
one line and exit status 1, whatever the command (``KSR_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os

# Before torch (and its OpenMP runtime) loads: threads that spin while they wait take the cores
# from each other and from every other process of a shared machine, which made training several
# times slower under load with the same numbers (bench/results.md, "threads"). A value the user
# set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from .. import __version__
from ..common import signals
from ..common.errors import KsrError


class KsrGroup(click.Group):
    """Turns ksr's expected failures into one ``Error:`` line, in every subcommand."""

    def invoke(self, ctx: click.Context):
        try:
            with signals.sigterm_raises():  # whatever the command is doing, not only inside a fold
                return super().invoke(ctx)
        except signals.Terminated:
            raise Stopped("stopped by SIGTERM; every file written so far is complete (rerun to continue)") from None
        except (KsrError, ValueError, OSError) as e:
            if os.environ.get("KSR_DEBUG"):
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            raise click.ClickException(message) from None


class Interrupted(click.ClickException):
    """Ctrl-C: one line saying how to continue, and the exit status a shell gives SIGINT."""

    exit_code = 128 + 2


class Stopped(click.ClickException):
    """SIGTERM: one line, and the exit status a shell gives a process ended by that signal."""

    exit_code = 128 + 15


@click.group(cls=KsrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ksr")
def main() -> None:
    """ksr: Key-Sparse Transformer for multimodal speech emotion recognition.

    Stage 1 (extract) turns a corpus into a feature cache; stage 2 (fuse) trains and
    evaluates the KS-Transformer on that cache.
    """


# Registering the commands on `main` (they import it from here).
from . import (  # noqa: E402, F401
    compare_commands,
    corpus_commands,
    data_commands,
    export_commands,
    model_commands,
    transcribe_commands,
)
