"""Test-only crash points: prove that a SIGKILL at any phase loses nothing.

Production code marks phase boundaries with ``point("shard-write")``. Nothing happens unless the
environment variable ``KSR_TEST_KILL_AT`` names that phase, as ``phase:count`` (kill the process
the count-th time the phase is reached, counting from 1) or a comma-separated list of them. The
reliability tests set it in a child process and then check that a rerun repairs everything.
"""

from __future__ import annotations

import os
import signal

ENV = "KSR_TEST_KILL_AT"
_seen: dict[str, int] = {}


def _targets() -> dict[str, int]:
    spec = os.environ.get(ENV, "")
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        phase, _, count = part.rpartition(":")
        if not phase or not count.isdigit():
            raise ValueError(f"{ENV}={spec!r}: write phase:count[,phase:count...]")
        out[phase] = int(count)
    return out


def point(phase: str) -> None:
    """Kill this process with SIGKILL if ``KSR_TEST_KILL_AT`` asks for this phase now."""
    if ENV not in os.environ:  # the usual case: one dict lookup
        return
    _seen[phase] = _seen.get(phase, 0) + 1
    if _targets().get(phase) == _seen[phase]:
        os.kill(os.getpid(), signal.SIGKILL)
