"""Named model sizes (--size) and the ksr recipe's scaling with model depth."""

from __future__ import annotations

import json

from click.testing import CliRunner
from support.tiny import TINY_MODEL, tiny_meta

from ksr.cache.synthetic import write_synthetic_cache
from ksr.cli import main
from ksr.demo import MODEL as DEMO_MODEL
from ksr.fuse.model.config import MODEL_SIZES, ModelConfig, attention_layers
from ksr.fuse.train.recipes import PRESETS, SCALING_REFERENCE_LAYERS, recipe, scaled_for_model


def test_small_is_the_demo_model_and_default_the_public_one():
    small = ModelConfig(**MODEL_SIZES["small"])
    for name in ("num_layers", "num_heads", "audio_ffn_dim", "text_ffn_dim", "max_positions", "attention_dropout"):
        assert getattr(small, name) == getattr(DEMO_MODEL, name), name
    assert ModelConfig(**MODEL_SIZES["default"]) == ModelConfig()


def test_attention_layers_count_both_modalities_and_both_ccab_layers():
    assert attention_layers(ModelConfig(**MODEL_SIZES["small"])) == SCALING_REFERENCE_LAYERS == 8
    assert attention_layers(ModelConfig()) == 2 * (5 + 2 * 3 + 2)  # 26
    assert attention_layers(ModelConfig(modalities="audio")) == 5 + 2  # no CCABs in a unimodal model


def test_ksr_recipe_scales_lr_by_depth_squared_and_warmup_by_depth():
    r = recipe("ksr")
    same, line = scaled_for_model(r, 8)
    assert same == r and line is None  # the small model: the recipe as tuned
    scaled, line = scaled_for_model(r, 26)
    ratio = 26 / 8
    assert scaled.lr == float(f"{4e-3 / ratio**2:.2g}") == 3.8e-4
    assert scaled.warmup_epochs == round(ratio, 1) == 3.2
    assert "lr 0.00038 (not 0.004)" in line and "26 attention layers" in line and "--lr" in line
    # a typed lr is kept, the warm-up still scales; both typed: nothing changes, nothing said
    kept, line = scaled_for_model(r, 26, {"lr"})
    assert kept.lr == 4e-3 and kept.warmup_epochs == 3.2 and "lr" not in line.split(":")[1].split(",")[0]
    assert scaled_for_model(r, 26, {"lr", "warmup_epochs"}) == (r, None)
    # the warm-up never takes more than a quarter of the epochs, nor less than the recipe's own
    assert scaled_for_model(recipe("ksr", epochs=8), 26)[0].warmup_epochs == 2.0
    assert scaled_for_model(recipe("ksr", epochs=2), 26)[0].warmup_epochs == 1.0


def test_public_presets_are_never_scaled():
    for name in ("paper", "official"):
        assert scaled_for_model(PRESETS[name], 26) == (PRESETS[name], None)


def test_cli_size_small_and_scaled_default(tmp_path):
    cache = tmp_path / "cache"
    write_synthetic_cache(cache, 40, tiny_meta(), seed=1, signal=1.0)
    base = ["train", "--cache", str(cache), "--fold", "2", "--epochs", "1", "--no-baseline", "--bootstrap", "0"]
    small = CliRunner().invoke(main, [*base, "--run", str(tmp_path / "s"), "--recipe", "ksr", "--size", "small"])
    assert small.exit_code == 0, small.output
    saved = json.loads((tmp_path / "s" / "run.json").read_text())
    assert saved["model"]["num_layers"] == [1, 1, 1] and saved["model"]["audio_ffn_dim"] == 64
    assert saved["recipe"]["lr"] == 4e-3 and "recipe scaled" not in small.output
    # the default-size model under the ksr recipe: one line says what was chosen and why
    deep = CliRunner().invoke(
        main, [*base, "--run", str(tmp_path / "d"), "--recipe", "ksr", "--heads", "2", "--layers", "2,1,1"]
    )
    assert deep.exit_code == 0, deep.output
    assert "ksr recipe scaled for this model: lr 0.0026 (not 0.004)" in deep.output
    assert json.loads((tmp_path / "d" / "run.json").read_text())["recipe"]["lr"] == 2.6e-3  # 4e-3 / (10/8)^2
    # resuming keeps the recorded (scaled) rate and does not scale it again
    again = CliRunner().invoke(main, [*base, "--run", str(tmp_path / "d"), "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "d" / "run.json").read_text())["recipe"]["lr"] == 2.6e-3
    assert "recipe scaled" not in again.output
    # a typed model option beats the size; the paper recipe is never scaled
    typed = CliRunner().invoke(main, [*base, "--run", str(tmp_path / "t"), "--size", "small", *TINY_MODEL])
    assert typed.exit_code == 0, typed.output
    saved = json.loads((tmp_path / "t" / "run.json").read_text())
    assert (
        saved["model"]["audio_ffn_dim"] == 8 and saved["recipe"]["lr"] == 5e-4 and "recipe scaled" not in typed.output
    )
