"""Warnings while it happens: a training loss still at chance, a fold's test score below chance."""

from __future__ import annotations

import math

import numpy as np
from click.testing import CliRunner
from support.tiny import TINY_MODEL, tiny_meta

from ksr.cache.synthetic import synthetic_utterances, write_synthetic_cache
from ksr.cache.writer import CacheWriter
from ksr.cli import main
from ksr.fuse.model.config import MODEL_SIZES, ModelConfig
from ksr.fuse.train.chance import (
    StallWatch,
    below_chance,
    chance_loss,
    first_checked_epoch,
    stall_advice,
    stall_check_applies,
    stalled,
)
from ksr.fuse.train.recipes import recipe


def test_chance_loss_is_the_entropy_of_the_training_class_shares():
    assert math.isclose(chance_loss([0, 1, 2, 3] * 5, 4), math.log(4))
    shares = np.array([3, 1]) / 4
    assert math.isclose(chance_loss([0, 0, 0, 1], 4), float(-(shares * np.log(shares)).sum()))
    assert chance_loss([2, 2, 2], 4) == 0.0  # one class: nothing to guess, never "stalled"
    assert not stalled(5, 0.0, 0.0, recipe("paper"))


def test_stalled_only_after_the_warm_up_and_near_the_chance_loss():
    paper, ksr = recipe("paper", epochs=4), recipe("ksr", warmup_epochs=3.2)
    assert first_checked_epoch(paper) == 1 and first_checked_epoch(ksr) == 5  # a full epoch after 3.2
    assert first_checked_epoch(recipe("paper")) == 18  # 15% of 120 epochs
    assert first_checked_epoch(recipe("ksr")) == 4  # 15% of 24 epochs, after the 1-epoch warm-up
    ln4 = math.log(4)
    assert not stalled(0, ln4, ln4, paper)  # the first epoch starts from random weights
    assert stalled(1, ln4, ln4, paper) and stalled(1, 0.996 * ln4, ln4, paper)
    assert not stalled(1, 0.99 * ln4, ln4, paper)  # a slow starter that has begun to learn
    assert not stalled(4, ln4, ln4, ksr) and stalled(5, ln4, ln4, ksr)


def test_advice_names_what_fits_the_run():
    default = ModelConfig()
    tips = stall_advice(recipe("paper"), default)
    assert "a lower --lr (this run: 0.0005; try 0.00013)" in tips and "--size small" in tips and "--recipe ksr" in tips
    small = stall_advice(recipe("ksr"), ModelConfig(**MODEL_SIZES["small"], input_norm="standardize"))
    assert "--size small" not in small and "--recipe ksr" not in small and "--lr" in small


def test_stall_watch_says_it_once():
    watch = StallWatch("seed 1 fold 2", [0, 1, 2, 3], recipe("paper", epochs=5), ModelConfig())
    assert watch.check(0, 2.0) is None
    said = watch.check(1, 1.40)
    assert said.startswith("seed 1 fold 2, epoch 2: the training loss 1.400 is still at chance level (1.386")
    assert watch.check(2, 1.40) is None


def test_other_losses_and_attribute_tasks_are_not_checked():
    assert stall_check_applies(recipe("ksr"), ModelConfig())
    assert stall_check_applies(recipe("ksr", loss="focal"), ModelConfig())  # its own chance level (main)


def test_below_chance_is_under_one_over_c():
    assert below_chance(0.0, 4) and below_chance(0.2499, 4)
    assert not below_chance(0.25, 4) and not below_chance(0.9, 4)


def test_a_stuck_run_is_warned_during_training_and_in_the_report(tmp_path):
    cache = tmp_path / "cache"
    write_synthetic_cache(cache, 40, tiny_meta(), seed=1, signal=0.0)
    run = tmp_path / "run"
    args = ["train", "--cache", str(cache), "--run", str(run), *TINY_MODEL, "--fold", "2", "--epochs", "3"]
    out = CliRunner().invoke(main, [*args, "--lr", "1e-9", "--no-baseline", "--bootstrap", "0"])
    assert out.exit_code == 0, out.output
    said = [line for line in out.output.splitlines() if "is still at chance level" in line]
    # once while it happens (epoch 2), once more in the summary, which carries the report's warnings
    assert len(said) == 2 and said[0].startswith("warning: seed 123 fold 2, epoch 2: the training loss")
    assert said[1].startswith("warning: seed 123 fold 2, epoch 3: the training loss")
    assert "try a lower --lr (this run: 1e-09" in said[0]
    assert "is still at chance level" in (run / "report.md").read_text()


def _swapped_session_cache(root, n=100):
    """Sessions 1-4 as usual; in session 5 every label is moved to the next class, so a model
    that learnt the features gets the test fold 5 wrong: below chance."""
    meta = tiny_meta()
    with CacheWriter(root, meta) as w:
        for utt in synthetic_utterances(n, meta, seed=3, signal=3.0, audio_lengths=[20] * n, text_lengths=[5] * n):
            if utt["session"] == "5":
                utt["label"] = meta.classes[(meta.classes.index(utt["label"]) + 1) % len(meta.classes)]
            w.add(**utt)


def test_a_fold_below_chance_is_said_at_its_end_and_in_the_report(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    _swapped_session_cache(cache)
    args = ["train", "--cache", str(cache), "--run", str(run), "--recipe", "ksr", *TINY_MODEL, "--fold", "5"]
    out = CliRunner().invoke(main, [*args, "--epochs", "8", "--select", "last", "--bootstrap", "0"])
    assert out.exit_code == 0, out.output
    said = [line for line in out.output.splitlines() if "below chance" in line]
    assert said and said[0].startswith("warning: seed 123 fold 5 (Session 5): test UA ")
    assert "(25.0% for 4 classes)" in said[0] and "--speaker-norm speaker" in said[0]
    report = (run / "report.md").read_text()
    assert "seed 123 fold 5: test UA" in report and "is below chance" in report
