"""Fold order: session and speaker names that are ASCII digits sort as numbers, everything else
(1_0, +1, Arabic-Indic or superscript digits) as text, so the order never depends on set order."""

import pytest

from ksr.fuse.train.folds import fold_groups

CASES = [
    (["10", "2", "1"], ["1", "2", "10"]),
    (["1_0", "2", "1"], ["1", "2", "1_0"]),  # int("1_0") would be 10, a number
    (["\u0661", "1", "2"], ["1", "2", "\u0661"]),  # "١".isdigit() is True, int("١") is 1
    (["\u00b2", "3", "1"], ["1", "3", "\u00b2"]),  # "²".isdigit() is True, int("²") raises
    (["01", "1", "b", "a"], ["01", "1", "a", "b"]),  # equal numbers: ordered by their text
]


@pytest.mark.parametrize("sessions, order", CASES)
def test_fold_order(sessions, order):
    for arrangement in (sessions, list(reversed(sessions))):  # the input order does not matter
        assert fold_groups("session", arrangement, ["s"] * len(arrangement)) == order
        assert fold_groups("speaker", ["x"] * len(arrangement), arrangement) == order
