"""Exceptions raised by ``ksr.cache``: one line each, naming the file and the problem."""

from __future__ import annotations

from ..common.errors import KsrError


class CacheError(KsrError):
    """A cache directory is damaged, incomplete, or cannot be used as asked.

    The message names the file (shard or index) and says what is wrong and what to do.
    """


class CacheMismatchError(CacheError):
    """A cache does not fit what the caller expects (encoders, dims, classes, schema version).

    ``differences`` holds one ``"key: cache has X, expected Y"`` line per field that differs.
    """

    def __init__(self, message: str, differences: list[str] | None = None):
        super().__init__(message)
        self.differences = list(differences or [])
