"""Converting checkpoints of the public implementation, and ksr's own checkpoints."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from support.model_inputs import padded_inputs, small_config

from ksr.cli import main
from ksr.fuse import (
    CheckpointError,
    KSTransformer,
    convert_official,
    load_checkpoint,
    load_model,
    save_checkpoint,
    to_official_state_dict,
)


def save_official(path, model, prefix=""):
    """What the public training script writes: epoch, model state_dict, optimizer state."""
    state = {prefix + k: v for k, v in to_official_state_dict(model).items()}
    opt = torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9)
    torch.save({"epoch": 42, "model": state, "optimizer": opt.state_dict()}, path)
    return state


CONFIGS = {
    "small": small_config(),
    "wide-3-classes": small_config(audio_dim=32, text_dim=8, audio_ffn_dim=7, text_ffn_dim=64, num_classes=3),
    "no-ccab": small_config(num_layers=(1, 0, 3), num_classes=6),
    "no-fusion-layers": small_config(num_layers=(4, 1, 0), max_positions=100),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("prefix", ["", "module."])
def test_round_trip_through_the_official_layout_gives_identical_logits(tmp_path, name, prefix):
    cfg = CONFIGS[name]
    model = KSTransformer(cfg).eval()
    save_official(tmp_path / "best.pt", model, prefix)
    convert_official(tmp_path / "best.pt", tmp_path / "ksr.pt", num_heads=cfg.num_heads, keep_rate=cfg.keep_rate)
    loaded = load_model(tmp_path / "ksr.pt")
    assert not loaded.training
    assert loaded.cfg.to_dict() == cfg.to_dict()
    inputs = padded_inputs(cfg, [37, 8], [11, 3])
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), model(*inputs))
    assert load_checkpoint(tmp_path / "ksr.pt")["meta"]["epoch"] == 42


def test_checkpoint_loads_with_weights_only(tmp_path):
    model = KSTransformer(small_config())
    save_checkpoint(tmp_path / "m.pt", model, {"note": "x"})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format"] == "ksr-checkpoint" and raw["meta"] == {"note": "x"}
    assert set(raw["model"]) == set(model.state_dict())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.pop("text_self_Trans.layers.1.fc2.bias"), r"missing keys: text_self_Trans\.layers\.1\.fc2\.bias"),
        (
            lambda s: s.update({"audio_self_Trans.extra_gate": torch.zeros(3)}),
            r"unexpected keys: audio_self_Trans\.extra_gate",
        ),
        (
            lambda s: s.update({"classifier.3.weight": torch.zeros(5, 20)}),
            r"wrong shapes: classifier\.3\.weight \(5, 20\) != expected \(10, 20\)",
        ),
        (
            lambda s: s.update(
                {"at_cross_Trans.CCABs_model.1.ks_trans_1.layers.0.attention.project_k.weight": torch.zeros(16, 20)}
            ),
            r"wrong shapes: at_cross_Trans\.CCABs_model\.1\.ks_trans_1\.layers\.0\.attention\.project_k\.weight \(16, 20\) != expected \(16, 24\)",
        ),
    ],
)
def test_damaged_official_checkpoint_is_refused_naming_the_key(tmp_path, damage, message):
    model = KSTransformer(small_config())
    state = to_official_state_dict(model)
    damage(state)
    torch.save({"epoch": 1, "model": state, "optimizer": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        convert_official(tmp_path / "bad.pt", tmp_path / "out.pt", num_heads=4)
    assert not (tmp_path / "out.pt").exists()


def test_missing_anchor_key_is_named(tmp_path):
    state = to_official_state_dict(KSTransformer(small_config()))
    del state["classifier.6.weight"], state["classifier.6.bias"]
    torch.save({"epoch": 1, "model": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"class count: missing key classifier\.6\.weight"):
        convert_official(tmp_path / "bad.pt", tmp_path / "out.pt", num_heads=4)


def test_heads_that_do_not_divide_the_dims_are_refused(tmp_path):
    save_official(tmp_path / "best.pt", KSTransformer(small_config()))
    with pytest.raises(CheckpointError, match="audio_dim=16 must be a positive multiple of num_heads=5"):
        convert_official(tmp_path / "best.pt", tmp_path / "out.pt", num_heads=5)


class NotATensor:
    pass


def test_pickled_code_is_refused(tmp_path):
    torch.save({"epoch": 1, "model": {"x": NotATensor()}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused: it holds more than tensors"):
        convert_official(tmp_path / "evil.pt", tmp_path / "out.pt")
    torch.save({"format": "ksr-checkpoint", "x": NotATensor()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_model(tmp_path / "evil2.pt")


def test_official_checkpoint_given_to_load_model_points_to_convert(tmp_path):
    save_official(tmp_path / "best.pt", KSTransformer(small_config()))
    with pytest.raises(CheckpointError, match="run `ksr convert-official` first"):
        load_model(tmp_path / "best.pt")


def test_cli_converts_and_reports_errors(tmp_path):
    cfg = small_config()
    model = KSTransformer(cfg).eval()
    save_official(tmp_path / "best.pt", model)
    runner = CliRunner()
    ok = runner.invoke(main, ["convert-official", str(tmp_path / "best.pt"), str(tmp_path / "out.pt"), "--heads", "4"])
    assert ok.exit_code == 0, ok.output
    assert "dims 16/24, FFN 12/20, layers (2, 2, 1), 4 classes, 4 heads, keep rate 0.5" in ok.output
    assert load_model(tmp_path / "out.pt").cfg.num_heads == 4
    missing = runner.invoke(main, ["convert-official", str(tmp_path / "nope.pt"), str(tmp_path / "o.pt")])
    assert missing.exit_code == 1 and "nope.pt: no such file" in missing.output
    again = runner.invoke(main, ["convert-official", str(tmp_path / "best.pt"), str(tmp_path / "out.pt")])
    assert again.exit_code == 1 and f"{tmp_path / 'out.pt'} exists; pass --force to replace it" in again.output
    before = (tmp_path / "best.pt").read_bytes()
    args = ["convert-official", str(tmp_path / "best.pt"), str(tmp_path / "best.pt"), "--heads", "4", "--force"]
    onto = runner.invoke(main, args)
    assert onto.exit_code == 1 and "best.pt is the checkpoint this command reads" in onto.output
    assert (tmp_path / "best.pt").read_bytes() == before
    forced = runner.invoke(
        main, ["convert-official", str(tmp_path / "best.pt"), str(tmp_path / "out.pt"), "--heads", "4", "--force"]
    )
    assert forced.exit_code == 0, forced.output
