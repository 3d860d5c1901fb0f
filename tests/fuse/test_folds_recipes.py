"""Fold splits never leak the test group; presets give the documented values epoch by epoch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from support.tiny import TINY_MODEL, tiny_meta

from ksr.fuse.train.folds import fold_groups, make_split, public_fold_name
from ksr.fuse.train.recipes import PRESETS, Recipe, build_optimizer, build_scheduler, recipe, warmup_factor


def corpus(seed=0, per_speaker=40):
    rng = np.random.default_rng(seed)
    sessions, speakers, labels = [], [], []
    for s in range(1, 6):
        for g in "FM":
            for _ in range(per_speaker):
                sessions.append(s)
                speakers.append(f"Ses0{s}{g}")
                labels.append(int(rng.integers(0, 4)))
    return np.array(sessions), np.array(speakers), np.array(labels)


@pytest.mark.parametrize("fold", range(1, 6))
def test_session_folds_hold_out_session_k(fold):
    sessions, speakers, labels = corpus()
    split = make_split("session", fold, sessions, speakers, labels, val_fraction=0.1, seed=3)
    assert set(sessions[split.test]) == {fold}
    assert fold not in set(sessions[split.train]) | set(sessions[split.valid])
    as_text = make_split("session", fold, sessions.astype(str), speakers, labels, val_fraction=0.1, seed=3)
    assert np.array_equal(as_text.test, split.test) and np.array_equal(as_text.valid, split.valid)
    assert not set(speakers[split.test]) & (set(speakers[split.train]) | set(speakers[split.valid]))
    together = np.concatenate([split.train, split.valid, split.test])
    assert sorted(together.tolist()) == list(range(len(sessions)))  # a partition
    assert split.test_group == f"Session {fold}"
    # stratified: about 10% of each class of the training sessions validates
    rest = sessions != fold
    for label in range(4):
        n = int(((labels == label) & rest).sum())
        assert int((labels[split.valid] == label).sum()) == max(1, round(0.1 * n))
    again = make_split("session", fold, sessions, speakers, labels, val_fraction=0.1, seed=3)
    assert np.array_equal(again.valid, split.valid)
    other = make_split("session", fold, sessions, speakers, labels, val_fraction=0.1, seed=4)
    assert not np.array_equal(other.valid, split.valid)


def test_speaker_folds_validate_on_the_session_partner():
    sessions, speakers, labels = corpus()
    assert fold_groups("speaker", sessions, speakers)[4] == "Ses03F"
    split = make_split("speaker", 5, sessions, speakers, labels)
    assert set(speakers[split.test]) == {"Ses03F"}
    assert set(speakers[split.valid]) == {"Ses03M"}
    assert 3 not in set(sessions[split.train])
    assert "test = speaker Ses03F" in split.describe()


def test_bad_fold_and_protocol():
    sessions, speakers, labels = corpus()
    with pytest.raises(ValueError, match=r"fold 6 does not exist: the session protocol has folds 1\.\.5"):
        make_split("session", 6, sessions, speakers, labels)
    with pytest.raises(ValueError, match="unknown protocol 'dialog'"):
        make_split("dialog", 1, sessions, speakers, labels)


def test_sessions_sort_by_number():
    assert fold_groups("session", ["10", "2", "1"], ["a", "b", "c"]) == ["1", "2", "10"]


def test_public_fold_numbering():
    assert [public_fold_name(s) for s in range(1, 6)] == [5, 4, 3, 2, 1]


def lrs_by_epoch(r: Recipe, epochs: int):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model.parameters(), r)
    sched = build_scheduler(opt, r)
    seen = []
    for _ in range(epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return opt, seen


def test_paper_preset_halves_every_30_epochs():
    r = PRESETS["paper"]
    opt, seen = lrs_by_epoch(r, 120)
    assert opt.param_groups[0]["momentum"] == 0.0 and r.batch_size == 32
    for epoch, lr in enumerate(seen):
        assert lr == pytest.approx(5e-4 * 0.5 ** (epoch // 30), rel=1e-12), epoch
        assert lr == pytest.approx(r.lr_at(epoch), rel=1e-12)
    assert seen[29] == pytest.approx(5e-4) and seen[30] == pytest.approx(2.5e-4) and seen[119] == pytest.approx(6.25e-5)


def test_official_preset_is_cosine_to_a_thousandth():
    r = PRESETS["official"]
    opt, seen = lrs_by_epoch(r, 121)
    assert opt.param_groups[0]["momentum"] == 0.9 and r.epochs == 120 and r.seed == 123
    for epoch, lr in enumerate(seen):
        want = 5e-7 + (5e-4 - 5e-7) * (1 + math.cos(math.pi * epoch / 120)) / 2
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-15), epoch
    assert seen[120] == pytest.approx(5e-7)


def test_overrides_and_unknown_settings():
    r = recipe("official", lr=1e-3, epochs=None, batch_size=8)
    assert (r.lr, r.epochs, r.batch_size, r.schedule) == (1e-3, 120, 8, "cosine")
    with pytest.raises(ValueError, match="unknown recipe settings: learning_rate"):
        recipe("paper", learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        recipe("fast")


def test_adamw_is_a_named_departure():
    assert PRESETS["paper"].optimizer == PRESETS["official"].optimizer == "sgd"
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), recipe("paper", optimizer="adamw", weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adamw, got .adam."):
        recipe("paper", optimizer="adam")


def test_warmup_ramps_linearly_per_step_then_leaves_the_schedule_alone():
    r = recipe("official", warmup_epochs=1.5)
    factors = [warmup_factor(r, step, steps_per_epoch=4) for step in range(8)]
    assert factors == [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 1.0, 1.0]  # ceil(1.5 * 4) = 6 steps
    assert warmup_factor(recipe("paper"), 0, 4) == 1.0  # the public presets have none
    with pytest.raises(ValueError, match="warmup_epochs must be in"):
        recipe("paper", warmup_epochs=500)


def test_the_ksr_preset_is_what_the_learning_study_measured():
    r = PRESETS["ksr"]
    assert (r.optimizer, r.lr, r.schedule, r.epochs, r.batch_size, r.warmup_epochs, r.momentum, r.weight_decay) == (
        "adamw",
        4e-3,
        "cosine",
        24,
        16,
        1.0,
        0.0,
        0.0,
    )
    # the public presets are untouched: what the public code and the paper run
    assert PRESETS["paper"] == Recipe(name="paper") and PRESETS["official"] == Recipe(
        name="official", momentum=0.9, schedule="cosine"
    )


def test_recipe_ksr_brings_standardised_inputs_and_paper_says_it_does_not_train(tmp_path):
    from click.testing import CliRunner

    from ksr.cache.synthetic import write_synthetic_cache
    from ksr.cli import main

    cache = tmp_path / "cache"
    write_synthetic_cache(cache, 40, tiny_meta(), seed=1, signal=1.0)
    tiny = [
        *TINY_MODEL,
        "--fold",
        "2",
        "--epochs",
        "1",
        "--no-baseline",
    ]
    ksr = CliRunner().invoke(
        main, ["train", "--cache", str(cache), "--run", str(tmp_path / "k"), "--recipe", "ksr", *tiny]
    )
    assert ksr.exit_code == 0, ksr.output
    saved = json.loads((tmp_path / "k" / "run.json").read_text())
    assert saved["model"]["input_norm"] == "standardize" and saved["recipe"]["name"] == "ksr"
    assert saved["model"]["classifier_dropout"] == 0.2
    typed = CliRunner().invoke(
        main,
        [
            "train",
            "--cache",
            str(cache),
            "--run",
            str(tmp_path / "t"),
            "--recipe",
            "ksr",
            "--input-norm",
            "none",
            *tiny,
        ],
    )
    assert json.loads((tmp_path / "t" / "run.json").read_text())["model"]["input_norm"] == "none"  # typed wins
    paper = CliRunner().invoke(main, ["train", "--cache", str(cache), "--run", str(tmp_path / "p"), *tiny])
    assert "note: the paper recipe (SGD at lr 5e-4) did not train in 120 epochs" in paper.output
    assert json.loads((tmp_path / "p" / "run.json").read_text())["model"]["input_norm"] == "none"
    assert typed.exit_code == 0
