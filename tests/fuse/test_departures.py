"""Named departures from the public implementation: parsed, applied, trained and tabulated."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.tiny import TINY_MODEL, tiny_cache

from ksr.cache.synthetic import synthetic_meta, write_synthetic_cache
from ksr.cli import main
from ksr.fuse import ModelConfig
from ksr.fuse.model.config import DEPARTURES, apply_departure

TINY_ARGS = [
    "--epochs",
    "1",
    *TINY_MODEL,
    "--batch-size",
    "32",
    "--fold",
    "2",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return tiny_cache(root, 60, seed=3, audio=(10, 7, 20), text=(2, 5))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pooling", "nowhere"], "Invalid value for '--pooling': 'nowhere' is not one of 'all_positions', 'masked'"),
        (["--heads", "0"], "Invalid value for '--heads': num_heads must be >= 1, got 0"),
        (["--heads", "-1"], "Invalid value for '--heads': num_heads must be >= 1, got -1"),
        (["--keep-rate", "0"], "Invalid value for '--keep-rate': keep_rate must be in (0, 1], got 0.0"),
        (["--keep-rate", "inf"], "Invalid value for '--keep-rate': keep_rate must be a finite number, got inf"),
        (["--layers", "1,1"], "Invalid value for '--layers': expected 3 comma-separated integers, got (1, 1)"),
        (["--layers", "1,x,1"], "Invalid value for '--layers': expected comma-separated integers, got '1,x,1'"),
        (["--dropout", "1"], "Invalid value for '--dropout': dropout must be in [0, 1), got 1.0"),
    ],
)
def test_bad_model_settings_are_refused_at_parse_time(cache_dir, tmp_path, args, message):
    """Each ModelConfig setting is its own flag, checked by the field's rule before anything runs."""
    result = CliRunner().invoke(main, ["train", "--cache", str(cache_dir), "--run", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "r").exists()


def test_every_model_setting_has_one_flag_with_help():
    from ksr.fuse.model.config import cli_settings

    helps = CliRunner().invoke(main, ["train", "--help"]).output
    names = {f.name for f in cli_settings()}
    # everything but the cache-decided dims, classes and attribute names (and free-form notes) is settable
    assert names == {f.name for f in dataclasses.fields(ModelConfig)} - {
        "audio_dim",
        "text_dim",
        "num_classes",
        "attributes",
        "extra",
    }
    for f in cli_settings():
        flag = f.metadata["cli"]["flag"] or "--" + f.name.replace("_", "-")
        assert flag in helps, f.name
    assert "--model-option" not in helps and "--audio-dim" not in helps


def test_each_departure_changes_only_its_own_fields_away_from_the_public_default():
    base = ModelConfig()
    assert apply_departure(base, "public") == base
    changed_by = {}
    for name, changes in DEPARTURES.items():
        cfg = apply_departure(base, name)
        differs = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)}
        assert differs == set(changes), name  # every listed change departs from the default
        changed_by[name] = differs
    singles = [d for n, d in changed_by.items() if n not in ("public", "all")]
    assert changed_by["all"] == set().union(*singles)
    with pytest.raises(ValueError, match="unknown departure 'nope'"):
        apply_departure(base, "nope")


def test_train_takes_model_options_into_the_run(cache_dir, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--cache",
            str(cache_dir),
            "--run",
            str(run),
            *TINY_ARGS,
            "--pooling",
            "masked",
            "--ks-renormalise",
            "--optimizer",
            "adamw",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "run.json").read_text())
    model = saved["model"]
    assert (model["pooling"], model["ks_renormalise"], model["mask_fusion"]) == ("masked", True, False)
    assert saved["recipe"]["optimizer"] == "adamw"
    assert "classifier_dropout" not in saved["recipe"]  # a model setting lives in the model only


def test_ablate_departures_tabulates_each_against_the_public_model(cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["ablate", "departures", "--cache", str(cache_dir), *TINY_ARGS, "--values", "public,masked-pooling"]
    )
    assert result.exit_code == 0, result.output
    table = json.loads(Path("runs/ablate-departures/ablation.json").read_text())
    assert [r["value"] for r in table["rows"]] == ["public", "masked-pooling"]
    pools = [json.loads(Path(r["run"], "run.json").read_text())["model"]["pooling"] for r in table["rows"]]
    assert pools == ["all_positions", "masked"]
    assert "| masked-pooling |" in result.output


def test_model_options_are_checked_with_the_cache_dims(tmp_path):
    """3 heads divide the cache's 12/24 dims though not the default 512/1024: the config is
    checked once, with the cache's dims in it. Dims and classes cannot be set: the cache decides."""
    cache = tmp_path / "cache"
    meta = synthetic_meta(audio_dim=12, text_dim=24, max_audio_len=30, max_text_len=6, dtype="float32")
    write_synthetic_cache(cache, 40, meta, seed=5, signal=1.0)
    run = tmp_path / "run"
    args = [
        "train",
        "--cache",
        str(cache),
        "--epochs",
        "1",
        "--layers",
        "1,1,1",
        "--audio-ffn-dim",
        "8",
        "--text-ffn-dim",
        "8",
        "--fold",
        "2",
    ]
    result = CliRunner().invoke(main, [*args, "--run", str(run), "--heads", "3"])
    assert result.exit_code == 0, result.output
    model = json.loads((run / "run.json").read_text())["model"]
    assert (model["num_heads"], model["audio_dim"], model["text_dim"]) == (3, 12, 24)
    refused = CliRunner().invoke(main, [*args, "--run", str(tmp_path / "r2"), "--heads", "5"])
    assert refused.exit_code == 1
    assert "audio_dim=12 must be a positive multiple of num_heads=5" in refused.output
    assert not (tmp_path / "r2" / "run.json").exists()
