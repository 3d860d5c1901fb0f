"""Attributes (issue 22): the CCC metric and loss, masked (NaN) attributes, the task heads, training.

The CCC is checked against an independent computation from numpy's covariance matrix and
Pearson correlation (CCC = 2 r s_x s_y / (s_x^2 + s_y^2 + (m_x - m_y)^2)) and its known values.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.tiny import TINY_MODEL, tiny_cache, tiny_config, tiny_meta

from ksr.cache import open_cache
from ksr.fuse.model.architectures import build_model
from ksr.fuse.model.tasks import output_width, split_outputs
from ksr.fuse.train.attributes import ccc_loss, task_loss
from ksr.fuse.train.checkpoint import load_model
from ksr.fuse.train.metrics import attribute_scores, ccc
from ksr.fuse.train.recipes import recipe
from ksr.fuse.train.runs import RunSpec, model_config_for_cache, prepare_run
from ksr.fuse.train.training import train_fold

NAMES = ("activation", "valence", "dominance")


def independent_ccc(x, y) -> float:
    """From numpy's population covariance matrix and np.corrcoef (not the formula under test)."""
    c = np.cov(np.vstack([x, y]), bias=True)
    r = np.corrcoef(x, y)[0, 1]
    sx, sy = np.sqrt(c[0, 0]), np.sqrt(c[1, 1])
    return 2 * r * sx * sy / (c[0, 0] + c[1, 1] + (np.mean(x) - np.mean(y)) ** 2)


def test_ccc_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.normal(3, 1, 50)
        y = 0.6 * x + rng.normal(0.5, 0.7, 50)
        assert ccc(x, y) == pytest.approx(independent_ccc(x, y), abs=1e-12)
        got = 1 - ccc_loss(torch.tensor(y[:, None]), torch.tensor(x[:, None])).item()
        assert got == pytest.approx(independent_ccc(x, y), abs=1e-5)  # float32, eps 1e-8


def test_ccc_known_values():
    x = np.array([1.0, 2.0, 4.0, 3.0, 5.0])
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, 2 * x.mean() - x) == pytest.approx(-1.0)  # mirrored about the mean
    assert ccc(x, np.full(5, 3.0)) == 0.0  # a constant prediction
    assert ccc(x, x + 1.0) == pytest.approx(2 * 2.0 / (2.0 + 2.0 + 1.0))  # a shift costs (var 2)
    assert 1 - ccc_loss(torch.tensor(x)[:, None], torch.tensor(x)[:, None]).item() == pytest.approx(1.0, abs=1e-6)
    mirrored = torch.tensor(2 * x.mean() - x)[:, None]
    assert ccc_loss(mirrored, torch.tensor(x)[:, None]).item() == pytest.approx(2.0, abs=1e-6)


def test_masked_attributes_are_left_out_of_scores_and_loss():
    rng = np.random.default_rng(1)
    truth = rng.normal(3, 1, (40, 3))
    pred = truth + rng.normal(0, 0.5, (40, 3))
    truth[[0, 5, 9], 1] = np.nan
    truth[:, 2] = np.nan
    truth[7, 2] = 2.0  # one value: too few for a CCC
    s = attribute_scores(truth, pred, NAMES)
    keep = ~np.isnan(truth[:, 1])
    assert s["ccc_activation"] == pytest.approx(independent_ccc(truth[:, 0], pred[:, 0]))
    assert s["ccc_valence"] == pytest.approx(independent_ccc(truth[keep, 1], pred[keep, 1]))
    assert s["ccc_dominance"] == 0.0
    assert s["counts"] == {"activation": 40, "valence": 37, "dominance": 1}
    assert s["missing"] == {"activation": 0, "valence": 3, "dominance": 39}
    assert s["ccc"] == pytest.approx((s["ccc_activation"] + s["ccc_valence"]) / 3)
    # The loss ignores the NaN rows (the same as dropping them) and the attribute with one value.
    loss = ccc_loss(torch.tensor(pred), torch.tensor(truth)).item()
    want = ((1 - independent_ccc(truth[:, 0], pred[:, 0])) + (1 - independent_ccc(truth[keep, 1], pred[keep, 1]))) / 2
    assert loss == pytest.approx(want, abs=1e-5)
    p = torch.tensor(pred, requires_grad=True)
    ccc_loss(p, torch.tensor(truth)).backward()
    assert torch.isfinite(p.grad).all() and (p.grad[[0, 5, 9], 1] == 0).all() and (p.grad[:, 2] == 0).all()
    all_missing = torch.full((4, 3), float("nan"))
    assert ccc_loss(torch.zeros(4, 3, requires_grad=True), all_missing).item() == 0.0


def test_task_loss_weighs_the_two_losses():
    cfg = tiny_config(task="both", attributes=NAMES, attribute_weight=0.25)
    out = torch.randn(6, cfg.num_classes + 3)
    target = torch.randn(6, 3)
    parts = split_outputs(out, cfg)
    ce = torch.tensor(1.5)
    assert task_loss(ce, parts, target, cfg).item() == pytest.approx(
        1.5 + 0.25 * ccc_loss(parts.attributes, target).item()
    )
    only = tiny_config(task="attributes", attributes=NAMES)
    assert split_outputs(out, only).logits is None
    assert task_loss(ce, split_outputs(out, only), target, only).item() == pytest.approx(
        ccc_loss(out[:, 4:], target).item()
    )
    classes = tiny_config()
    assert task_loss(ce, split_outputs(out[:, :4], classes), None, classes) is ce


def test_task_classes_is_the_model_it_always_was():
    """Same seed, same weights and outputs with or without the task options; both adds a head after."""
    torch.manual_seed(3)
    base = build_model(tiny_config(audio_dim=8, text_dim=12))
    torch.manual_seed(3)
    both = build_model(tiny_config(audio_dim=8, text_dim=12, task="both", attributes=NAMES))
    sb, sa = base.state_dict(), both.state_dict()
    assert all(torch.equal(sb[k], sa[k]) for k in sb)
    assert sorted(set(sa) - set(sb)) == [f"attribute_head.{i}.{w}" for i in (0, 3) for w in ("bias", "weight")]
    base.eval(), both.eval()
    a, t = torch.randn(2, 9, 8), torch.randn(2, 4, 12)
    out = both(a, t)
    assert out.shape == (2, output_width(both.cfg)) == (2, 7)
    torch.testing.assert_close(split_outputs(out, both.cfg).logits, base(a, t), rtol=0, atol=0)


def test_a_task_needs_attributes_in_the_cache(tmp_path):
    with pytest.raises(ValueError, match="task both needs numeric attributes in the cache, and it has none"):
        tiny_config(task="both")
    cache = open_cache(tiny_cache(tmp_path / "c", 10, seed=0), progress=False)
    with pytest.raises(ValueError, match="task attributes needs numeric attributes"):
        model_config_for_cache(cache, tiny_config(), task="attributes")
    with pytest.raises(ValueError, match="needs the ks-transformer model, not the probe baseline"):
        tiny_config(task="both", attributes=NAMES, architecture="probe")


@pytest.fixture(scope="module")
def attribute_cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("attr"), 120, seed=2, meta=tiny_meta(attributes=NAMES))


@pytest.mark.parametrize("task, metric", [("both", "ua"), ("attributes", "ccc")])
def test_training_records_ccc_and_selects_on_it(attribute_cache, tmp_path, task, metric):
    cache = open_cache(attribute_cache, progress=False)
    model = model_config_for_cache(cache, tiny_config(), task=task)
    assert model.attributes == NAMES
    spec = RunSpec(
        model=model,
        recipe=recipe("ksr", epochs=3, batch_size=16),
        metric=metric,
        cache_meta=cache.meta.to_dict(),
    )
    prepare_run(tmp_path, spec, resume=False)
    train_fold(cache, spec, tmp_path, fold=1, seed=0, device=torch.device("cpu"), progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["model"]["task"] == task and run["model"]["attributes"] == list(NAMES)
    history = json.loads((tmp_path / "seed0/fold1/history.json").read_text())
    first = history["epochs"][0]
    assert {"valid_ccc", "valid_ccc_activation", "valid_ccc_valence", "valid_ccc_dominance"} <= set(first)
    assert ("valid_ua" in first) == (task == "both")
    values = [e[f"valid_{metric}"] for e in history["epochs"]]
    assert history["best"]["value"] == max(values)
    from ksr.fuse.report.evaluation import evaluate_run
    from ksr.fuse.report.stats import Bootstrap

    report = evaluate_run(tmp_path, cache, spec, bootstrap=Bootstrap(resamples=0))
    assert report["attributes"]["systems"]["model"]["seeds"]["0"]["folds"]["1"]["counts"] == dict.fromkeys(NAMES, 24)
    untrained = [w for w in report["warnings"] if "classifier that was never trained" in w]
    assert len(untrained) == (task == "attributes")
    best = torch.load(tmp_path / "seed0/fold1/best.pt", weights_only=True)
    assert best["config"]["task"] == task and best["config"]["attributes"] == list(NAMES)
    model = load_model(tmp_path / "seed0/fold1/best.pt")
    assert model.cfg.task == task and output_width(model.cfg) == 4 + 3


def test_train_both_reports_ccc_beside_ridge(attribute_cache, tmp_path):
    """ksr train --task both: the report's attribute section holds the model and the ridge
    baseline on the same folds, with intervals; the class probe baseline is still fitted."""
    from click.testing import CliRunner

    from ksr.cli import main

    run = tmp_path / "run"
    args = ["train", "--cache", str(attribute_cache), "--run", str(run), "--recipe", "ksr", "--epochs", "2"]
    args += ["--fold", "1", "--fold", "2", "--task", "both", "--bootstrap", "50", *TINY_MODEL]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    a = report["attributes"]
    assert a["names"] == list(NAMES) and set(a["systems"]) == {"model", "ridge"}
    for system in ("model", "ridge"):
        pooled = a["systems"][system]["seeds"]["123"]["pooled"]
        assert set(pooled["ci"]) == {"ccc", "ccc_activation", "ccc_valence", "ccc_dominance"}
        assert pooled["counts"] == dict.fromkeys(NAMES, 48)
        folds = a["systems"][system]["seeds"]["123"]["folds"]
        assert a["systems"][system]["summary"]["ccc"] == pytest.approx(np.mean([f["ccc"] for f in folds.values()]))
    assert set(a["ridge"]["alphas"]["123"]) == {"1", "2"}
    assert "## Attributes (CCC)" in (run / "report.md").read_text()
    assert "linear probe" in report["baselines"]


def test_tensorboard_tags_and_named_attributes():
    from ksr.fuse.model.tasks import attributes_by_name
    from ksr.fuse.report.tensorboard import scalar_tags

    tags = scalar_tags({"valid_ccc": 0.5, "valid_ccc_valence": 0.25, "test_ccc": 0.4})
    assert tags == {"valid/ccc": 0.5, "valid/ccc_valence": 0.25, "test/ccc": 0.4}
    cfg = tiny_config(task="both", attributes=NAMES)
    out = torch.arange(14.0).reshape(2, 7)
    got = attributes_by_name(out, cfg)
    assert list(got) == list(NAMES) and got["valence"].tolist() == [5.0, 12.0]
    assert attributes_by_name(out[:, :4], tiny_config()) == {}
    with pytest.raises(ValueError, match="a model output of 4 columns, the task 'both' gives 7"):
        split_outputs(out[:, :4], cfg)


@pytest.fixture(scope="module")
def two_runs(attribute_cache, tmp_path_factory):
    """Two --task both runs on the same fold: attribute weight 1 and 3."""
    from click.testing import CliRunner

    from ksr.cli import main

    root = tmp_path_factory.mktemp("runs")
    for name, weight in (("a", "1"), ("b", "3")):
        args = ["train", "--cache", str(attribute_cache), "--run", str(root / name), "--recipe", "ksr"]
        args += ["--epochs", "2", "--fold", "3", "--task", "both", "--attribute-weight", weight, "--bootstrap", "0"]
        result = CliRunner().invoke(main, [*args, "--no-baseline", *TINY_MODEL])
        assert result.exit_code == 0, result.output
    return root / "a", root / "b"


def test_compare_gives_the_ccc_difference_with_a_paired_bootstrap(two_runs, tmp_path):
    from click.testing import CliRunner

    from ksr.cli import main
    from ksr.fuse.report.attribute_report import read_attribute_predictions

    a, b = two_runs
    saved = read_attribute_predictions(a / "report_attribute_predictions.csv")
    assert saved["names"] == list(NAMES) and list(saved["seeds"]["123"]) == ["3"]
    pooled = json.loads((a / "report.json").read_text())["attributes"]["systems"]["model"]["seeds"]["123"]["pooled"]
    got = saved["seeds"]["123"]["3"]
    assert ccc(got["truth"][:, 1], got["pred"][:, 1]) == pytest.approx(pooled["ccc_valence"], abs=1e-12)
    out = tmp_path / "c.json"
    result = CliRunner().invoke(main, ["compare", str(a), str(b), "--json", str(out), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    att = json.loads(out.read_text())["comparisons"][0]["attributes"]
    report_b = json.loads((b / "report.json").read_text())["attributes"]["systems"]["model"]["seeds"]["123"]
    for key in ("ccc", "ccc_activation", "ccc_valence", "ccc_dominance"):
        assert att[key]["a"] == pytest.approx(pooled[key], abs=1e-9)
        assert att[key]["difference"] == pytest.approx(report_b["pooled"][key] - pooled[key], abs=1e-9)
        lo, hi = att[key]["interval"]
        assert lo <= hi and 0 < att[key]["p"] <= 1
    assert "| mean CCC |" in result.output


def test_resume_continues_the_task_the_run_recorded(attribute_cache, tmp_path):
    """--resume alone takes --task and --attribute-weight from run.json (not the defaults)."""
    from click.testing import CliRunner

    from ksr.cli import main

    run = tmp_path / "run"
    base = ["train", "--cache", str(attribute_cache), "--run", str(run), "--recipe", "ksr", "--fold", "2"]
    base += ["--no-baseline", "--bootstrap", "0", *TINY_MODEL]
    first = CliRunner().invoke(main, [*base, "--epochs", "2", "--task", "both", "--attribute-weight", "0.5"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, ["train", "--cache", str(attribute_cache), "--run", str(run), "--resume"])
    assert again.exit_code == 0, again.output
    saved = json.loads((run / "run.json").read_text())["model"]
    assert (saved["task"], saved["attribute_weight"], saved["attributes"]) == ("both", 0.5, list(NAMES))
    assert json.loads((run / "report.json").read_text())["attributes"]["names"] == list(NAMES)
