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


# --- cache commands (ksr.cache) --------------------------------------------------------------


# --- corpus and extraction commands (ksr.extract) --------------------------------------------


if __name__ == "__main__":
    main()
