"""``python -m ksr.cli``: the ``ksr`` command."""

from . import main

main()
