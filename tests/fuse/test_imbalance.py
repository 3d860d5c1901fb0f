"""Training for imbalanced classes (issue 22): the class-weighted and focal losses against their
formulas, the class-balanced sampler's epochs, and the options' way into run.json, resume and
the report (with the class-weighted probe beside the plain one)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from support.tiny import TINY_MODEL, tiny_cache, tiny_config

from ksr.cache import open_cache
from ksr.cli import main
from ksr.common import Ranks
from ksr.fuse.train.losses import class_loss, class_weights, describe_loss, focal_loss
from ksr.fuse.train.recipes import Recipe, recipe
from ksr.fuse.train.runs import RunSpec, cache_split, model_config_for_cache, prepare_run
from ksr.fuse.train.sampling import balanced_order
from ksr.fuse.train.training import FoldTrainer, epoch_batches, train_fold


def random_batch(n: int = 23, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=g)
    return logits, labels


def numpy_focal(logits: np.ndarray, labels: np.ndarray, gamma: float, weight: np.ndarray | None = None) -> float:
    """The focal loss written out: FL = -w_y (1 - p_y)^gamma log p_y, weighted mean over the batch."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    p_y = p[np.arange(len(labels)), labels]
    w = np.ones(len(labels)) if weight is None else weight[labels]
    return float(np.sum(-w * (1 - p_y) ** gamma * np.log(p_y)) / np.sum(w))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 5.0])
def test_focal_loss_follows_its_formula(gamma):
    logits, labels = random_batch()
    got = focal_loss(logits, labels, gamma).item()
    assert got == pytest.approx(numpy_focal(logits.numpy(), labels.numpy(), gamma), rel=1e-10)
    weight = np.array([0.5, 2.0, 1.0, 3.0, 0.25])
    got = focal_loss(logits, labels, gamma, torch.tensor(weight)).item()
    assert got == pytest.approx(numpy_focal(logits.numpy(), labels.numpy(), gamma, weight), rel=1e-10)


def test_focal_loss_is_smaller_than_cross_entropy_and_gamma_0_is_cross_entropy():
    logits, labels = random_batch()
    ce = F.cross_entropy(logits, labels)
    assert focal_loss(logits, labels, 0.0).item() == pytest.approx(ce.item(), rel=1e-12)
    assert focal_loss(logits, labels, 2.0).item() < ce.item()  # easy utterances count less
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25], dtype=torch.float64)
    weighted = F.cross_entropy(logits, labels, weight=weight)
    assert focal_loss(logits, labels, 0.0, weight).item() == pytest.approx(weighted.item(), rel=1e-12)


def test_focal_loss_gradient_is_finite_on_a_certain_prediction():
    logits = torch.tensor([[200.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    focal_loss(logits, torch.tensor([0, 1]), 0.5).backward()
    assert torch.isfinite(logits.grad).all()


def test_class_weights_are_inverse_frequencies_normalised_like_balanced():
    labels = np.array([0] * 8 + [1] * 4 + [2] * 2 + [3] * 1 + [5] * 1)  # class 4 absent
    w = class_weights(labels, 6).numpy()
    counts = np.array([8, 4, 2, 1, 0, 1])
    expected = np.where(counts > 0, 16 / (5 * np.maximum(counts, 1)), 0.0)  # n / (classes present * n_c)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert (counts * w).sum() == pytest.approx(len(labels))  # the prior-weighted mean weight is 1
    from sklearn.utils.class_weight import compute_class_weight

    present = np.array([0, 1, 2, 3, 5])
    np.testing.assert_allclose(w[present], compute_class_weight("balanced", classes=present, y=labels), rtol=1e-6)


def test_weighted_cross_entropy_is_torchs_weighted_loss():
    logits, labels = random_batch(n=40, k=4, seed=3)
    train_labels = np.array([0] * 12 + [1] * 6 + [2] * 3 + [3] * 3)
    weight = torch.tensor([24 / (4 * 12), 24 / (4 * 6), 24 / (4 * 3), 24 / (4 * 3)])
    fn = class_loss("weighted-ce", 2.0, train_labels, 4)
    expected = F.cross_entropy(logits.float(), labels, weight=weight)
    assert fn(logits.float(), labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert fn(logits.float(), labels).item() != pytest.approx(F.cross_entropy(logits.float(), labels).item())
    focal0 = class_loss("weighted-focal", 0.0, train_labels, 4)
    assert focal0(logits.float(), labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_default_loss_is_plain_cross_entropy():
    assert class_loss("ce", 2.0, np.array([0, 0, 1]), 2) is F.cross_entropy
    assert (Recipe().loss, Recipe().sampler) == ("ce", "shuffle")
    for name in ("paper", "official", "ksr"):
        assert (recipe(name).loss, recipe(name).sampler) == ("ce", "shuffle")
    with pytest.raises(ValueError, match="loss must be one of ce, weighted-ce, focal, weighted-focal, got 'dice'"):
        Recipe(loss="dice")
    with pytest.raises(ValueError, match="sampler must be one of shuffle, balanced"):
        Recipe(sampler="oversample")
    with pytest.raises(ValueError, match="focal_gamma must be 0 or more"):
        Recipe(focal_gamma=-1.0)
    assert (
        describe_loss("weighted-focal", 2.0, "balanced")
        == "class-weighted focal loss (gamma 2), class-balanced batches"
    )


def imbalanced(counts: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
    indices = 1000 + 3 * np.arange(len(labels))  # cache indices, not positions
    order = np.random.default_rng(0).permutation(len(labels))
    return indices[order], labels[order]


def test_the_balanced_sampler_gives_every_class_an_equal_share_of_the_epoch():
    indices, labels = imbalanced({0: 80, 1: 40, 2: 20, 3: 10})  # 8:4:2:1, 150 utterances
    label_of = dict(zip(indices.tolist(), labels.tolist(), strict=True))
    g = torch.Generator().manual_seed(5)
    for _ in range(3):  # three epochs from one generator
        order = balanced_order(indices, labels, g)
        assert len(order) == 150 and set(order.tolist()) <= set(indices.tolist())
        per_class = Counter(label_of[i] for i in order.tolist())
        assert sorted(per_class.values()) == [37, 37, 38, 38]  # 150 = 4 * 37 + 2
        uses = Counter(order.tolist())
        for c, n in {0: 80, 1: 40, 2: 20, 3: 10}.items():
            members = [uses[i] for i in indices[labels == c].tolist()]
            share = per_class[c]
            # each utterance of a class comes up floor or ceil of (its class's places / its size) times
            assert min(members) == share // n and max(members) == -(-share // n), c
        assert len(set(label_of[i] for i in order[:30].tolist())) == 4  # shuffled, not class after class


def test_the_balanced_sampler_is_deterministic_under_a_seed():
    indices, labels = imbalanced({0: 30, 1: 9, 2: 4})

    def epochs(seed):
        g = torch.Generator().manual_seed(seed)
        return [balanced_order(indices, labels, g) for _ in range(2)]

    a, b, c = epochs(11), epochs(11), epochs(12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], a[1])  # the next epoch is another draw
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="43 utterances but 42 labels"):
        balanced_order(indices, labels[:-1], torch.Generator())


def test_a_balanced_epoch_has_as_many_steps_as_a_shuffled_one():
    indices, labels = imbalanced({0: 40, 1: 20, 2: 10, 3: 5})
    shuffled = epoch_batches(indices, 16, torch.Generator().manual_seed(1), Ranks())
    balanced = epoch_batches(indices, 16, torch.Generator().manual_seed(1), Ranks(), labels)
    assert [len(b) for b in shuffled] == [len(b) for b in balanced] == [16, 16, 16, 16, 11]
    two = [epoch_batches(indices, 16, torch.Generator().manual_seed(1), Ranks(r, 2), labels) for r in (0, 1)]
    rejoined = [np.sort(np.concatenate([a, b])) for a, b in zip(*two, strict=True)]
    assert all(np.array_equal(x, np.sort(y)) for x, y in zip(rejoined, balanced, strict=True))  # ranks share batches


# --- in training -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache"), 80, seed=2)


def spec_for(cache, **changes) -> RunSpec:
    r = recipe("official", **{"epochs": 3, "batch_size": 16, "lr": 0.05, **changes})
    return RunSpec(model=model_config_for_cache(cache, tiny_config()), recipe=r, cache_meta=cache.meta.to_dict())


def test_a_fold_trains_with_the_weights_of_its_own_training_labels(cache_dir):
    cache = open_cache(cache_dir, progress=False)
    spec = spec_for(cache, loss="weighted-ce")
    split = cache_split(cache, spec, 2, 7)
    trainer = FoldTrainer(cache, spec, split, 2, 7, torch.device("cpu"), False, Ranks())
    counts = np.bincount(cache.labels[split.train], minlength=4)
    weight = torch.tensor(len(split.train) / (4 * counts), dtype=torch.float32)
    logits, labels = random_batch(n=12, k=4, seed=9)
    expected = F.cross_entropy(logits.float(), labels, weight=weight)
    assert trainer.loss_fn(logits.float(), labels).item() == pytest.approx(expected.item(), rel=1e-6)


class Stop(Exception):
    pass


def test_balanced_focal_training_resumes_to_the_uninterrupted_run(cache_dir, tmp_path):
    cache = open_cache(cache_dir, progress=False)
    spec = spec_for(cache, loss="weighted-focal", focal_gamma=1.5, sampler="balanced")
    cpu = torch.device("cpu")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for run in (whole, cut):
        prepare_run(run, spec, resume=False)
    train_fold(cache, spec, whole, fold=1, seed=4, device=cpu, progress=False)

    def stop_after_first(epoch, record):
        if epoch == 0:
            raise Stop

    with pytest.raises(Stop):
        train_fold(cache, spec, cut, fold=1, seed=4, device=cpu, progress=False, on_epoch=stop_after_first)
    train_fold(cache, spec, cut, fold=1, seed=4, device=cpu, progress=False, resume=True)
    a, b = (json.loads((r / "seed4/fold1/history.json").read_text()) for r in (whole, cut))
    assert a == b and len(a["epochs"]) == 3
    plain = tmp_path / "plain"
    prepare_run(plain, spec_for(cache), resume=False)
    train_fold(cache, spec_for(cache), plain, fold=1, seed=4, device=cpu, progress=False)
    c = json.loads((plain / "seed4/fold1/history.json").read_text())
    assert c["epochs"][0]["train_loss"] != a["epochs"][0]["train_loss"]  # the options changed the training


TRAIN = [*TINY_MODEL, "--batch-size", "16", "--recipe", "official", "--lr", "0.05", "--device", "cpu"]


def test_the_options_reach_run_json_resume_and_the_report(cache_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--cache", str(cache_dir), "--run", str(run), *TRAIN, "--epochs", "1", "--fold", "2"]
    imbalance = ["--loss", "weighted-focal", "--focal-gamma", "1.5", "--sampler", "balanced", "--bootstrap", "0"]
    result = CliRunner().invoke(main, [*args, *imbalance, "--metric", "macro_f1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "run.json").read_text())["recipe"]
    assert (saved["loss"], saved["focal_gamma"], saved["sampler"]) == ("weighted-focal", 1.5, "balanced")
    assert "loss: class-weighted focal loss (gamma 1.5), class-balanced batches" in result.output
    assert "  class-weighted linear probe: WA" in result.output and "  linear probe: WA" in result.output
    report = (run / "report.md").read_text()
    assert "Training loss: class-weighted focal loss (gamma 1.5), class-balanced batches." in report
    assert "| class-weighted linear probe |" in report
    probes = [
        json.loads((run / d / "run.json").read_text())["recipe"] for d in ("baseline-probe", "baseline-probe-weighted")
    ]
    assert [(p["loss"], p["sampler"]) for p in probes] == [("ce", "shuffle"), ("weighted-ce", "shuffle")]
    # --resume alone takes the loss and the sampler from run.json (else: "recipe differ")
    resumed = CliRunner().invoke(
        main, ["train", "--cache", str(cache_dir), "--run", str(run), "--resume", "--fold", "3"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert "class-balanced batches" in resumed.output
    other = CliRunner().invoke(main, [*args, "--resume", "--loss", "ce"])
    assert other.exit_code == 1 and "holds a run with other settings (recipe differ)" in other.output
    evaluated = CliRunner().invoke(main, ["eval", "--run", str(run), "--bootstrap", "0", "--device", "cpu"])
    assert evaluated.exit_code == 0 and "| class-weighted linear probe |" in evaluated.output


def test_a_default_run_keeps_one_probe_and_names_its_loss(cache_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--cache", str(cache_dir), "--run", str(run), *TRAIN, "--epochs", "1", "--fold", "2"]
    result = CliRunner().invoke(main, [*args, "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert "training loss: cross-entropy\n" in result.output and "class-weighted" not in result.output
    assert not (run / "baseline-probe-weighted").exists()
    assert json.loads((run / "run.json").read_text())["recipe"]["loss"] == "ce"


def test_focal_gamma_without_a_focal_loss_is_refused(cache_dir, tmp_path):
    args = ["train", "--cache", str(cache_dir), "--run", str(tmp_path / "r"), *TRAIN, "--epochs", "1"]
    result = CliRunner().invoke(main, [*args, "--focal-gamma", "1"])
    assert result.exit_code == 2
    assert "Invalid value for --focal-gamma: applies to --loss focal or weighted-focal, not ce" in result.output
    assert not (tmp_path / "r").exists()
    probe = CliRunner().invoke(main, [*args, "--model", "probe", "--loss", "focal"])
    assert probe.exit_code == 1
    assert "the linear probe fits a logistic regression: --loss ce or weighted-ce" in probe.output


def test_any_imbalance_option_brings_the_class_weighted_probe(cache_dir, tmp_path):
    from ksr.fuse.report.experiment import probe_baselines

    cache = open_cache(cache_dir, progress=False)
    names = {
        changes: [name for name, _, _ in probe_baselines(spec_for(cache, **dict(changes)), tmp_path)]
        for changes in ((), (("loss", "focal"),), (("loss", "weighted-ce"),), (("sampler", "balanced"),))
    }
    assert names.pop(()) == ["linear probe"]
    assert all(v == ["linear probe", "class-weighted linear probe"] for v in names.values())


def test_the_chance_level_follows_the_loss_trained_with():
    """The stall warning compares the training loss with what a model ignoring its input scores
    under the same loss and batches (plain cross-entropy: the entropy of the class shares)."""
    from ksr.fuse.train.chance import StallWatch, chance_loss
    from ksr.fuse.train.losses import constant_prediction_loss

    labels = np.array([0] * 8 + [1] * 4 + [2] * 2 + [3] * 1)
    entropy = chance_loss(labels, 4)
    assert constant_prediction_loss("ce", 2.0, "shuffle", labels, 4) == pytest.approx(entropy, rel=1e-5)
    assert constant_prediction_loss("focal", 0.0, "shuffle", labels, 4) == pytest.approx(entropy, rel=1e-5)
    assert constant_prediction_loss("weighted-ce", 2.0, "shuffle", labels, 4) == pytest.approx(np.log(4), rel=1e-5)
    assert constant_prediction_loss("ce", 2.0, "balanced", labels, 4) == pytest.approx(np.log(4), rel=1e-5)
    assert constant_prediction_loss("weighted-ce", 2.0, "shuffle", labels, 6) == pytest.approx(np.log(4), rel=1e-5)
    # focal, two classes 3:1: the best constant probability q of class 0, by a fine grid in numpy
    q = np.linspace(1e-4, 1 - 1e-4, 200001)
    grid = np.min(0.75 * (1 - q) ** 2 * -np.log(q) + 0.25 * q**2 * -np.log(1 - q))
    two = np.array([0, 0, 0, 1])
    assert constant_prediction_loss("focal", 2.0, "shuffle", two, 2) == pytest.approx(grid, rel=1e-4)
    cfg = tiny_config(num_classes=4)
    assert StallWatch("f", labels, Recipe(), cfg).chance == entropy  # the default: unchanged
    focal = StallWatch("f", labels, Recipe(loss="focal"), cfg).chance
    assert focal == pytest.approx(constant_prediction_loss("focal", 2.0, "shuffle", labels, 4)) and focal < entropy
