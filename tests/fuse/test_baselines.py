"""Baselines beside the model: the probe against an independent scikit-learn computation, the
head's pooling, the same splits for every model, and the input standardisation's statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from support.tiny import TINY_MODEL, tiny_cache

from ksr.cache import open_cache
from ksr.cache.synthetic import synthetic_meta
from ksr.cli import main
from ksr.fuse import ModelConfig, load_model
from ksr.fuse.model.architectures import build_model
from ksr.fuse.model.baselines import HeadBaseline, masked_mean_std
from ksr.fuse.model.normalise import fit_standardizers

TINY = ["--epochs", "2", *TINY_MODEL, "--heads", "1"]  # 5- and 6-dim features: one head


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    meta = synthetic_meta(audio_dim=6, text_dim=5, max_audio_len=30, max_text_len=8, dtype="float32")
    return tiny_cache(root, 100, seed=4, audio=(1, 7, 29), text=(1, 8), signal=0.6, meta=meta)


def rows_of(cache, indices):
    """Each utterance's true frames and tokens, read row by row (no batching, no masks)."""
    out = []
    for i in indices:
        b = cache.batch([i])
        out.append(
            (
                b.audio[0, : int(b.audio_lengths[0])].double().numpy(),
                b.text[0, : int(b.text_lengths[0])].double().numpy(),
            )
        )
    return out


@pytest.mark.parametrize("loss, class_weight", [("ce", None), ("weighted-ce", "balanced")])
def test_probe_matches_scikit_learn_on_the_same_split(cache_dir, tmp_path, loss, class_weight):
    run = tmp_path / "probe"
    result = CliRunner().invoke(
        main,
        ["train", "--cache", str(cache_dir), "--run", str(run), "--model", "probe", "--fold", "3", "--loss", loss],
    )
    assert result.exit_code == 0, result.output
    cache = open_cache(cache_dir, progress=False)
    split = json.loads((run / "seed123" / "fold3" / "split.json").read_text())
    index = {uid: i for i, uid in enumerate(cache.ids)}
    train, test = [index[u] for u in split["train"]], [index[u] for u in split["test"]]
    history = json.loads((run / "seed123" / "fold3" / "history.json").read_text())
    c = history["epochs"][history["best"]["epoch"]]["C"]

    def pooled(indices):  # numpy: [mean, std] of audio then text over the true rows
        return np.stack(
            [np.concatenate([a.mean(0), a.std(0), t.mean(0), t.std(0)]) for a, t in rows_of(cache, indices)]
        )

    scaler = StandardScaler().fit(pooled(train))
    fit = (scaler.transform(pooled(train)), cache.labels[train])
    reference = LogisticRegression(C=c, max_iter=5000, class_weight=class_weight).fit(*fit)
    want = reference.predict_proba(scaler.transform(pooled(test)))
    if class_weight:  # the weights change the fit: the comparison below tells the two probes apart
        unweighted = LogisticRegression(C=c, max_iter=5000).fit(*fit).predict_proba(scaler.transform(pooled(test)))
        assert np.abs(unweighted - want).max() > 1e-3
    model = load_model(run / "seed123" / "fold3" / "best.pt")
    batch = cache.batch(test)
    with torch.no_grad():
        got = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask).softmax(-1).double()
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)
    assert [e["C"] for e in history["epochs"]] == [0.001, 0.01, 0.1, 1.0, 10.0]


def test_train_fits_the_probe_beside_the_model_on_the_same_splits(cache_dir, tmp_path):
    run = tmp_path / "ks"
    result = CliRunner().invoke(main, ["train", "--cache", str(cache_dir), "--run", str(run), *TINY, "--fold", "2"])
    assert result.exit_code == 0, result.output
    assert "linear probe: WA" in result.output
    probe = run / "baseline-probe"
    for name in ("split.json",):
        assert (run / "seed123/fold2" / name).read_text() == (probe / "seed123/fold2" / name).read_text()
    report = json.loads((run / "report.json").read_text())
    assert report["model"] == "KS-Transformer" and list(report["baselines"]) == ["linear probe"]
    probe_report = json.loads((probe / "report.json").read_text())
    assert report["baselines"]["linear probe"]["summary"] == probe_report["summary"]
    assert "| linear probe |" in (run / "report.md").read_text()
    assert json.loads((probe / "run.json").read_text())["model"]["architecture"] == "probe"
    # ksr eval shows the same table, from the saved checkpoints
    evaluated = CliRunner().invoke(main, ["eval", "--run", str(run)])
    assert evaluated.exit_code == 0 and "| linear probe |" in evaluated.output


def test_no_baseline_fits_none(cache_dir, tmp_path):
    run = tmp_path / "alone"
    result = CliRunner().invoke(
        main, ["train", "--cache", str(cache_dir), "--run", str(run), *TINY, "--fold", "2", "--no-baseline"]
    )
    assert result.exit_code == 0, result.output
    assert not (run / "baseline-probe").exists() and "baselines" not in json.loads((run / "report.json").read_text())


def test_head_pools_its_projection_over_true_frames_only():
    cfg = ModelConfig(architecture="head", audio_dim=6, text_dim=5, head_dim=7, num_heads=1)
    torch.manual_seed(0)
    head = HeadBaseline(cfg).double().eval()
    audio, text = torch.randn(2, 9, 6, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    am = torch.tensor([[False] * 9, [False] * 3 + [True] * 6])
    tm = torch.tensor([[False] * 4, [False] * 2 + [True] * 2])
    got = head(audio, text, am, tm)
    a1 = torch.relu(head.projections["audio"](audio[1, :3])).mean(0)
    t1 = torch.relu(head.projections["text"](text[1, :2])).mean(0)
    torch.testing.assert_close(got[1], head.classifier(torch.cat([a1, t1])))
    audio[1, 3:] = 1e6  # padding changes nothing
    torch.testing.assert_close(head(audio, text, am, tm)[1], got[1])


def test_masked_mean_std_is_numpy_over_true_rows():
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    mask = torch.arange(7)[None, :] >= torch.tensor([7, 1, 4])[:, None]
    mean, std = masked_mean_std(x, mask)
    for i, n in enumerate([7, 1, 4]):
        np.testing.assert_allclose(mean[i].numpy(), x[i, :n].numpy().mean(0), rtol=1e-12)
        np.testing.assert_allclose(std[i].numpy(), x[i, :n].numpy().std(0), atol=1e-12)


def test_standardizers_use_the_true_frames_of_the_training_utterances(cache_dir):
    cache = open_cache(cache_dir, progress=False)
    cfg = ModelConfig(audio_dim=6, text_dim=5, num_heads=1, num_layers=(1, 1, 1), input_norm="standardize")
    model = build_model(cfg)
    indices = np.arange(0, 100, 3)
    fit_standardizers(model, cache, indices)
    frames = rows_of(cache, indices)
    audio = np.concatenate([a for a, _ in frames])
    text = np.concatenate([t for _, t in frames])
    np.testing.assert_allclose(model.audio_input_norm.mean.numpy(), audio.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.audio_input_norm.std.numpy(), audio.std(0), rtol=1e-5)
    np.testing.assert_allclose(model.text_input_norm.std.numpy(), text.std(0), rtol=1e-5)
    # standardised inputs keep padded positions at zero
    b = cache.batch(indices[:4])
    z = model.audio_input_norm(b.audio, b.audio_padding_mask)
    assert (z[b.audio_padding_mask] == 0).all()
    # the default model has no standardizer: the public computation is unchanged
    assert build_model(cfg.replace(input_norm="none")).audio_input_norm is None


def test_ablate_baselines_trains_each_model_on_the_same_folds(cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["ablate", "baselines", "--cache", str(cache_dir), *TINY, "--fold", "2"])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "runs/ablate-baselines/ablation.json").read_text())
    assert [r["value"] for r in table["rows"]] == ["ks-transformer", "head", "probe"]
    splits = {(tmp_path / r["run"] / "seed123/fold2/split.json").read_text() for r in table["rows"]}
    assert len(splits) == 1


def test_standardised_inputs_make_the_model_blind_to_per_dimension_offsets_and_scales():
    """The defect the learning study found (docs/learning.md, D1): shared per-dimension offsets of
    the encoder features reach the public model. With input_norm="standardize" and statistics of
    the same utterances, an affine change of each feature dimension leaves the logits unchanged."""
    torch.manual_seed(3)
    cfg = ModelConfig(
        audio_dim=8,
        text_dim=12,
        num_heads=2,
        num_layers=(1, 1, 1),
        audio_ffn_dim=8,
        text_ffn_dim=8,
        max_positions=64,
        input_norm="standardize",
    )
    model = build_model(cfg).double().eval()
    audio, text = torch.randn(3, 20, 8, dtype=torch.float64), torch.randn(3, 6, 12, dtype=torch.float64)
    am = torch.arange(20)[None, :] >= torch.tensor([20, 11, 5])[:, None]
    tm = torch.arange(6)[None, :] >= torch.tensor([6, 3, 1])[:, None]
    audio, text = audio.masked_fill(am[..., None], 0), text.masked_fill(tm[..., None], 0)

    def logits(a, t):
        for norm, x, mask in ((model.audio_input_norm, a, am), (model.text_input_norm, t, tm)):
            rows = x[~mask]  # statistics of the true frames, as fit_standardizers takes them
            norm.mean.copy_(rows.mean(0))
            norm.std.copy_(rows.std(0, unbiased=False))
        with torch.no_grad():
            return model(a, t, am, tm)

    scale_a, shift_a = torch.rand(8, dtype=torch.float64) * 5 + 0.1, torch.randn(8, dtype=torch.float64) * 10
    scale_t, shift_t = torch.rand(12, dtype=torch.float64) * 5 + 0.1, torch.randn(12, dtype=torch.float64) * 10
    moved_a = (audio * scale_a + shift_a).masked_fill(am[..., None], 0)
    moved_t = (text * scale_t + shift_t).masked_fill(tm[..., None], 0)
    torch.testing.assert_close(logits(moved_a, moved_t), logits(audio, text), rtol=1e-9, atol=1e-9)
    public = build_model(cfg.replace(input_norm="none")).double().eval()
    public.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith(("audio_input_norm", "text_input_norm"))}
    )
    with torch.no_grad():
        assert (public(moved_a, moved_t, am, tm) - public(audio, text, am, tm)).abs().max() > 1e-3
