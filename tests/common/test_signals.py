"""ksr.common.signals: SIGTERM raises Terminated inside sigterm_raises(), waits for the end of a
deferred() block, and the previous handler comes back afterwards."""

import os
import signal
import time

import pytest

from ksr.common.signals import Terminated, deferred, sigterm_raises

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")


def sigterm_self():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)  # the handler runs here at the latest


@pytest.fixture(autouse=True)
def keep_handler():
    """A test that fails half-way must not leave the pytest process without its SIGTERM handler."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_sigterm_raises_inside_the_block_and_the_old_handler_returns():
    calls = []
    signal.signal(signal.SIGTERM, lambda *_: calls.append("old"))
    steps = []
    with pytest.raises(Terminated, match="^stopped by SIGTERM$"):
        with sigterm_raises():
            steps.append("before")
            sigterm_self()
            steps.append("after")  # never reached
    assert steps == ["before"]
    sigterm_self()  # outside the block: the previous handler again
    assert calls == ["old"]


def test_terminated_passes_through_except_exception():
    with pytest.raises(Terminated):
        with sigterm_raises():
            try:
                sigterm_self()
            except Exception:  # noqa: BLE001 - what per-item error isolation does
                pytest.fail("Terminated must not be caught as an Exception")


def test_a_second_sigterm_takes_the_default_action():
    with pytest.raises(Terminated):
        with sigterm_raises():
            sigterm_self()
    # while the exception unwound, the handler in place was the default one
    with sigterm_raises():
        with pytest.raises(Terminated):
            sigterm_self()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_deferred_holds_the_signal_until_the_block_ends():
    steps = []
    with pytest.raises(Terminated):
        with sigterm_raises():
            with deferred():
                steps.append("commit starts")
                sigterm_self()
                with deferred():  # nested: only the outermost block's end raises
                    steps.append("inner")
                steps.append("commit ends")
            steps.append("after the block")  # never reached
    assert steps == ["commit starts", "inner", "commit ends"]


def test_deferred_lets_its_own_exception_through_and_forgets_the_signal():
    with sigterm_raises():
        with pytest.raises(OSError, match="disk full"):
            with deferred():
                sigterm_self()
                raise OSError("disk full")
        with deferred():  # a new block: nothing is pending any more
            pass


def test_without_a_signal_nothing_happens():
    with sigterm_raises():
        with deferred():
            value = 1 + 1
    assert value == 2
