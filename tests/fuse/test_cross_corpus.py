"""Cross-corpus evaluation (ksr.fuse.report.cross_corpus): a tiny run trained on one demo corpus,
scored by `ksr eval --cache` on a second demo corpus made with another seed; scores against an
independent pass of each model, the class map against renamed labels, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.tiny import TINY_MODEL, tiny_cache

from ksr.cache import open_cache
from ksr.cli import main
from ksr.demo import AUDIO_FRAMES
from ksr.extract.corpora.demo import make_demo_corpus
from ksr.extract.corpora.manifest import read_manifest, write_manifest
from ksr.extract.pipeline import extract_corpus
from ksr.fuse import load_model
from ksr.fuse.report.cross_corpus import LEAVE_OUT, label_mapping, parse_class_map
from ksr.fuse.train.runs import RunError


def demo_cache(root: Path, seed: int, corpus: str, tiny: Path, rename: dict[str, str] | None = None) -> Path:
    manifest = make_demo_corpus(root / f"data{seed}", seed=seed, per_speaker=4)
    if rename:  # the same utterances under other class names
        rows = [u.__class__(**{**u.__dict__, "label": rename.get(u.label, u.label)}) for u in read_manifest(manifest)]
        manifest = write_manifest(root / f"data{seed}" / f"{corpus}.csv", rows)
    out = root / corpus
    extract_corpus(
        manifest,
        out,
        "tiny-audio",
        "tiny-text",
        corpus=corpus,
        max_audio_len=AUDIO_FRAMES,
        device="cpu",
        progress=False,
        tiny_root=tiny,
    )
    return out


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Run on demo (seed 0; folds 1 and 2, 1 epoch, with its linear probe); demo-b made with seed 1,
    and demo-c: demo-b's utterances with ang and hap renamed anger and joy."""
    root = tmp_path_factory.mktemp("cross")
    tiny = root / "k" / "tiny"
    train = demo_cache(root, 0, "demo", tiny)
    other = demo_cache(root, 1, "demo-b", tiny)
    renamed = demo_cache(root, 1, "demo-c", tiny, {"ang": "anger", "hap": "joy"})
    run = root / "run"
    args = ["train", "--cache", str(train), "--run", str(run), "--epochs", "1", *TINY_MODEL, "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--fold", "1", "--fold", "2"])
    assert result.exit_code == 0, result.output
    return {"root": root, "train": train, "other": other, "renamed": renamed, "run": run}


def evaluate(corpora, *extra: str) -> tuple[int, str]:
    args = ["eval", "--run", str(corpora["run"]), "--device", "cpu", "--bootstrap", "50", *extra]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def test_each_fold_model_is_scored_on_all_of_the_other_corpus(corpora):
    own = (corpora["run"] / "report.json").read_text()
    code, output = evaluate(corpora, "--cache", str(corpora["other"]))
    assert code == 0, output
    assert (corpora["run"] / "report.json").read_text() == own  # the run's own report is left alone
    report = json.loads((corpora["run"] / "report_on_demo-b.json").read_text())
    cc = report["cross_corpus"]
    assert (cc["trained_on"], cc["tested_on"], cc["tested"], cc["left_out"]) == ("demo", "demo-b", 40, {})
    assert "**Cross-corpus**: trained on demo" in output and "tested on demo-b" in output

    # Independent pass: each fold's model over all 40 utterances of the other cache.
    cache = open_cache(corpora["other"], progress=False)
    batch = cache.batch(np.arange(len(cache)))
    probs = []
    for fold in ("1", "2"):
        model = load_model(corpora["run"] / "seed123" / f"fold{fold}" / "best.pt").eval()
        with torch.no_grad():
            logits = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask)
        probs.append(logits.softmax(-1).double().numpy())
        f = report["seeds"]["123"]["folds"][fold]
        assert f["n"] == 40 and f["wa"] == pytest.approx(float((probs[-1].argmax(1) == batch.labels.numpy()).mean()))
        assert "ci" in f and f["test_group"] == "all of demo-b"  # intervals, as a normal report has
    ensemble = (probs[0] + probs[1]) / 2
    assert report["ensemble"]["models"] == 2
    assert report["ensemble"]["wa"] == pytest.approx(float((ensemble.argmax(1) == batch.labels.numpy()).mean()))
    folds = report["seeds"]["123"]["folds"]
    assert report["summary"]["wa"] == pytest.approx((folds["1"]["wa"] + folds["2"]["wa"]) / 2)
    probe = json.loads((corpora["run"] / "baseline-probe" / "report.json").read_text())
    assert report["baselines"]["linear probe"]["summary"] != probe["summary"]  # scored on demo-b, not its folds
    assert "| linear probe |" in output


def test_the_class_map_maps_renamed_labels(corpora):
    assert evaluate(corpora, "--cache", str(corpora["other"]))[0] == 0
    base = json.loads((corpora["run"] / "report_on_demo-b.json").read_text())
    code, output = evaluate(corpora, "--cache", str(corpora["renamed"]))
    assert code == 1 and len(output.splitlines()) == 1
    assert output.startswith("Error: the tested cache's class(es) anger, joy are not the run's (ang, neu, hap, sad)")
    code, output = evaluate(corpora, "--cache", str(corpora["renamed"]), "--class-map", "anger=ang,joy=hap")
    assert code == 0, output
    mapped = json.loads((corpora["run"] / "report_on_demo-c.json").read_text())
    assert mapped["summary"] == base["summary"] and mapped["cross_corpus"]["class_map"] == {
        "anger": "ang",
        "joy": "hap",
    }
    code, output = evaluate(corpora, "--cache", str(corpora["renamed"]), "--class-map", "anger=ang,joy=-")
    assert code == 0, output
    left = json.loads((corpora["run"] / "report_on_demo-c.json").read_text())["cross_corpus"]
    assert left["left_out"] == {"joy": 10} and left["tested"] == 30


def test_same_corpus_name_is_a_normal_eval_unless_asked(corpora):
    code, output = evaluate(corpora, "--cache", str(corpora["train"]), "--cross-corpus")
    assert code == 0, output
    report = json.loads((corpora["run"] / "report_on_demo.json").read_text())
    assert report["seeds"]["123"]["folds"]["1"]["n"] == 40  # all of it, not fold 1's test session


def test_caches_of_other_encoders_are_refused_in_one_line(corpora):
    other = tiny_cache(corpora["root"] / "synthetic", 12, 0)
    code, output = evaluate(corpora, "--cache", str(other))
    assert code == 1 and len(output.splitlines()) == 1
    assert output.startswith(f"Error: cache {other} for run {corpora['run']} does not fit: ")
    assert "audio_encoder" in output and output.rstrip().endswith("made with the same encoders")


def test_class_map_parsing_and_refusals():
    assert parse_class_map("joy=hap, fear=-") == {"joy": "hap", "fear": LEAVE_OUT}
    for text, message in (
        ("joy", r"write NAME=CLASS pairs"),
        ("joy=hap,joy=ang", r"joy is mapped twice"),
    ):
        with pytest.raises(RunError, match=message):
            parse_class_map(text)
    trained = ("ang", "hap", "neu", "sad")
    assert label_mapping(("joy", "sad", "fear"), trained, {"joy": "hap", "fear": "-"}).tolist() == [1, 3, -1]
    with pytest.raises(RunError, match=r"^--class-map joy=happy: the run's classes are ang, hap, neu, sad"):
        label_mapping(("joy",), trained, {"joy": "happy"})
    with pytest.raises(RunError, match=r"^--class-map: surprise is not a class of the tested cache \(joy\)$"):
        label_mapping(("joy",), trained, {"surprise": "hap"})
    with pytest.raises(RunError, match=r"leaves every class of the tested cache out"):
        label_mapping(("joy",), trained, {"joy": "-"})


NAMES = ("activation", "valence", "dominance")


def test_a_run_of_classes_and_attributes_is_scored_on_both(tmp_path):
    from support.tiny import tiny_meta

    from ksr.fuse.train.metrics import attribute_scores

    train = tiny_cache(tmp_path / "a", 60, seed=2, meta=tiny_meta(attributes=NAMES))
    other = tiny_cache(tmp_path / "b", 30, seed=3, meta=tiny_meta(attributes=NAMES, corpus="elsewhere"))
    run = tmp_path / "run"
    args = ["train", "--cache", str(train), "--run", str(run), "--epochs", "1", "--task", "both", *TINY_MODEL]
    result = CliRunner().invoke(main, [*args, "--fold", "1", "--fold", "2", "--no-baseline", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", "--run", str(run), "--cache", str(other), "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report_on_elsewhere.json").read_text())
    part = report["cross_corpus_attributes"]
    assert part["scored"] and part["names"] == list(NAMES)
    cache = open_cache(other, progress=False)
    batch = cache.batch(np.arange(len(cache)))
    for fold in ("1", "2"):  # each fold model's CCC, computed here from its own output
        model = load_model(run / "seed123" / f"fold{fold}" / "best.pt").eval()
        with torch.no_grad():
            out = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask)
        expected = attribute_scores(cache.attributes, out[:, 4:].double().numpy(), NAMES)
        assert part["seeds"]["123"]["folds"][fold]["ccc"] == pytest.approx(expected["ccc"], abs=1e-6)
    assert "Attributes on the tested corpus, CCC" in result.output

    # A run of task attributes (its run.json says so; `ksr train --task attributes` on 2 folds stops on a
    # KeyError 'valid_ua' in main's training summary at the time of writing) is refused before a model loads.
    spec = json.loads((run / "run.json").read_text())
    spec["model"]["task"] = "attributes"
    (tmp_path / "attr-run").mkdir()
    (tmp_path / "attr-run" / "run.json").write_text(json.dumps(spec))
    result = CliRunner().invoke(main, ["eval", "--run", str(tmp_path / "attr-run"), "--cache", str(other)])
    assert result.exit_code == 1 and "learns attributes only (--task attributes)" in result.output
