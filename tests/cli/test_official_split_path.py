"""The path docs/corpora.md promises, end to end: an MSP-Podcast release folder -> `ksr prepare
msp-podcast` -> `ksr extract` -> `ksr train --protocol split` -> a report per official test split.
The release is a generated replica in its exact layout; the encoders are the tiny ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from support.extract_fixtures import write_wav
from support.tiny import TINY_MODEL

from ksr.cli import main

HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"
LETTERS = "AHNS"
SETS = ["Train"] * 5 + ["Development", "Test1", "Test2"]


def build_release(root: Path, turns: int = 48) -> dict[str, list[str]]:
    """A replica release; returns the ids expected in each split."""
    lines, expected = [HEADER], {}
    for i in range(turns):
        stem = f"MSP-PODCAST_{i // 4 + 1:04d}_{i % 4:04d}"
        letter, split_set = LETTERS[i % 4], SETS[(i // 4) % len(SETS)]
        lines.append(f"{stem}.wav,{letter},3.0,4.0,3.0,{i % 6},{'Female' if i % 2 else 'Male'},{split_set}")
        rng = np.random.default_rng(i)
        write_wav(root / "Audios" / f"{stem}.wav", (0.05 * rng.standard_normal(4000 + 40 * i)).astype(np.float32))
        (root / "Transcripts").mkdir(parents=True, exist_ok=True)
        (root / "Transcripts" / f"{stem}.txt").write_text(f"turn {i} says {'angry happy calm sad'.split()[i % 4]}\n")
        split = {"Train": "train", "Development": "valid", "Test1": "test1", "Test2": "test2"}[split_set]
        expected.setdefault(split, []).append(stem)
    (root / "Labels").mkdir(parents=True)
    (root / "Labels" / "labels_consensus.csv").write_text("\n".join(lines) + "\n")
    return expected


def test_release_folder_to_a_report_per_test_split(tmp_path):
    from click.testing import CliRunner

    expected = build_release(tmp_path / "MSP")
    env = {"KSR_CACHE_DIR": str(tmp_path / "k")}
    run = CliRunner().invoke
    manifest, cache, runs = tmp_path / "m.csv", tmp_path / "cache", tmp_path / "run"
    result = run(main, ["prepare", "msp-podcast", str(tmp_path / "MSP"), "--out", str(manifest)], env=env)
    assert result.exit_code == 0, result.output
    result = run(main, ["prepare", "check", str(manifest)], env=env)
    assert result.exit_code == 0, result.output
    args = ["extract", str(manifest), "--out", str(cache), "--audio-encoder", "tiny-audio"]
    result = run(main, [*args, "--text-encoder", "tiny-text", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    args = ["train", "--cache", str(cache), "--run", str(runs), "--protocol", "split", "--epochs", "1"]
    result = run(main, [*args, *TINY_MODEL, "--device", "cpu"], env=env)
    assert result.exit_code == 0, result.output
    recorded = json.loads((runs / "seed123" / "split" / "split.json").read_text())
    assert sorted(recorded["train"]) == sorted(expected["train"])
    assert sorted(recorded["valid"]) == sorted(expected["valid"])
    assert {k: sorted(v) for k, v in recorded["tests"].items()} == {
        "test1": sorted(expected["test1"]),
        "test2": sorted(expected["test2"]),
    }
    report = json.loads((runs / "report.json").read_text())
    assert set(report["official_split"]) == {"test1", "test2", "pooled"}
    assert report["official_split"]["test1"]["n"] == len(expected["test1"])
    assert "official split" in (runs / "report.md").read_text()
