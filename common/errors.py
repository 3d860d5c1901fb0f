"""The one base of ksr's expected failures."""


class KsrError(Exception):
    """A failure ksr expects (bad input, a damaged file, a missing device): its message is one
    line that says what is wrong and what to do. The ``ksr`` command prints it without a
    traceback and exits with status 1."""
