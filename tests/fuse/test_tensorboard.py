"""ksr train --tensorboard: event files TensorBoard itself reads back, with the run's own numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from support.cli_runner import invoke_ksr
from support.tiny import TINY_MODEL, tiny_cache, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ksr.cache import open_cache
from ksr.common.errors import KsrError
from ksr.fuse import load_model
from ksr.fuse.report.tensorboard import TensorBoard, scalar_tags
from ksr.fuse.train.recipes import recipe
from ksr.fuse.train.runs import RunSpec, model_config_for_cache, prepare_run
from ksr.fuse.train.training import train_fold

METRIC_TAGS = ("loss", "wa", "ua", "macro_f1", "weighted_f1")
EXPECTED_TAGS = {"train/loss", "train/lr"} | {f"{part}/{m}" for part in ("valid", "test") for m in METRIC_TAGS}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return tiny_cache(root, 100, seed=2, audio=(8, 5, 23), text=(1, 6))


def train_args(cache_dir, run: str, *extra, folds=(1, 4), seeds="3,5") -> list:
    return [
        "train",
        "--cache",
        cache_dir,
        "--run",
        run,
        "--recipe",
        "ksr",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        *TINY_MODEL,
        *[a for fold in folds for a in ("--fold", fold)],
        "--seeds",
        seeds,
        "--no-baseline",
        *extra,
    ]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard's own reader loads them."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_scalar_tags_sections():
    tags = scalar_tags({"epoch": 3, "lr": 0.5, "train_loss": 1.0, "valid_ua": 0.25, "test_macro_f1": 0.5, "C": 1.0})
    assert tags == {"train/lr": 0.5, "train/loss": 1.0, "valid/ua": 0.25, "test/macro_f1": 0.5}


def test_curves_hold_the_runs_own_numbers(cache_dir, tmp_path):
    plain = invoke_ksr(train_args(cache_dir, "runs/plain"), tmp_path)
    assert plain.exit_code == 0, plain.output
    result = invoke_ksr(train_args(cache_dir, "runs/tb", "--tensorboard"), tmp_path)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs/tb"
    cache = open_cache(cache_dir)
    row = {utt: i for i, utt in enumerate(cache.ids)}
    boards = sorted(p.relative_to(run / "tensorboard").as_posix() for p in (run / "tensorboard").glob("seed*/fold*"))
    assert boards == ["seed3/fold1", "seed3/fold4", "seed5/fold1", "seed5/fold4"]
    for board in boards:
        curves = scalars(run / "tensorboard" / board)
        assert set(curves) == EXPECTED_TAGS, board
        history = json.loads((run / board / "history.json").read_text())["epochs"]
        # Logging changes nothing: the same epochs as the run trained without it.
        assert history == json.loads((tmp_path / "runs/plain" / board / "history.json").read_text())["epochs"]
        assert all([step for step, _ in points] == [0, 1] for points in curves.values()), board
        for record in history:
            step = record["epoch"]
            assert curves["train/lr"][step][1] == np.float32(record["lr"])
            assert curves["train/loss"][step][1] == np.float32(record["train_loss"])
            for m in METRIC_TAGS:
                assert curves[f"valid/{m}"][step][1] == np.float32(record[f"valid_{m}"]), (board, m)
        # The test curves' last point: the saved last epoch's model on the fold's test utterances,
        # scored here with scikit-learn.
        test_ids = json.loads((run / board / "split.json").read_text())["test"]
        batch = cache.batch(np.array([row[u] for u in test_ids]))
        with torch.no_grad():
            logits = load_model(run / board / "last.pt")(
                batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask
            )
        y, p = batch.labels.numpy(), logits.argmax(-1).numpy()
        labels = list(range(len(cache.classes)))
        expected = {
            "loss": F.cross_entropy(logits, batch.labels).item(),
            "wa": accuracy_score(y, p),
            "ua": balanced_accuracy_score(y, p) if set(y) == set(labels) else None,
            "macro_f1": f1_score(y, p, labels=labels, average="macro", zero_division=0),
            "weighted_f1": f1_score(y, p, labels=labels, average="weighted", zero_division=0),
        }
        for m, value in expected.items():
            if value is not None:
                assert curves[f"test/{m}"][-1] == (1, pytest.approx(value, rel=1e-5, abs=1e-6)), (board, m)


def test_resumed_fold_shows_each_epoch_once(cache_dir, tmp_path):
    cache = open_cache(cache_dir)
    r = recipe("ksr", epochs=3, batch_size=16)
    spec = RunSpec(model=model_config_for_cache(cache, tiny_config()), recipe=r, cache_meta=cache.meta.to_dict())
    prepare_run(tmp_path, spec, resume=False)
    board = TensorBoard(tmp_path / "tb")

    class Stop(Exception):
        pass

    def stop(epoch, record):
        if epoch == 0:
            raise Stop

    cpu = torch.device("cpu")
    with pytest.raises(Stop):
        train_fold(cache, spec, tmp_path, 2, 0, cpu, progress=False, on_epoch=stop, tensorboard=board)
    # A run killed after logging epoch 1 but before saving it: its point must not survive the resume.
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(tmp_path / "tb/seed0/fold2")) as killed:
        killed.add_scalar("valid/ua", 99.0, 1)
    train_fold(cache, spec, tmp_path, 2, 0, cpu, progress=False, resume=True, tensorboard=board)
    curves = scalars(tmp_path / "tb/seed0/fold2")
    history = json.loads((tmp_path / "seed0/fold2/history.json").read_text())["epochs"]
    assert [step for step, _ in curves["valid/ua"]] == [0, 1, 2]
    assert [v for _, v in curves["valid/ua"]] == [np.float32(e["valid_ua"]) for e in history]


def test_missing_writer_is_one_line_before_training(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` now fails
    result = invoke_ksr(train_args(cache_dir, "runs/none", "--tensorboard", "curves"), tmp_path)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --tensorboard needs the package tensorboardX, which is not installed: "
        "pip install 'ksr[tensorboard]' (or pip install tensorboardX)"
    ]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "curves").exists()


def test_test_selection_logs_its_selection_set_as_test(cache_dir, tmp_path):
    """Under --select test the epoch's scores are the test set's: tagged test/, no valid/."""
    args = train_args(cache_dir, "runs/sel", "--tensorboard", "tb", "--select", "test", folds=(1,), seeds="3")
    result = invoke_ksr(args, tmp_path)
    assert result.exit_code == 0, result.output
    curves = scalars(tmp_path / "tb/seed3/fold1")
    assert set(curves) == {"train/loss", "train/lr"} | {f"test/{m}" for m in METRIC_TAGS}
    history = json.loads((tmp_path / "runs/sel/seed3/fold1/history.json").read_text())["epochs"]
    assert [v for _, v in curves["test/ua"]] == [np.float32(e["test_ua"]) for e in history]


@pytest.mark.parametrize("where", ["tbfile", "tbfile/curves"])
def test_a_file_as_the_folder_is_one_line_before_training(cache_dir, tmp_path, where):
    (tmp_path / "tbfile").write_text("not a folder")
    result = invoke_ksr(train_args(cache_dir, "runs/file", "--tensorboard", where), tmp_path)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: --tensorboard {where}: not a directory"), lines
    assert not (tmp_path / "runs").exists()
    with pytest.raises(KsrError, match="not a directory"):
        TensorBoard(tmp_path / where)
