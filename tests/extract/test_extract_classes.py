"""The extraction summary counts the utterances of each class, and a class with fewer than a
handful of them (most likely a mistyped label) gets a warning naming it."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ksr.cache import open_cache
from ksr.cli import main
from ksr.extract.corpora.manifest import REQUIRED_COLUMNS
from ksr.extract.summary import MIN_CLASS_UTTERANCES, ExtractSummary

LABELS = ["positive"] * 6 + ["negative"] * 5 + ["postive"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("ksr-home")


def _corpus(root, labels):
    (root / "wav").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=REQUIRED_COLUMNS)
        w.writeheader()
        for i, label in enumerate(labels):
            sf.write(root / "wav" / f"u{i:02d}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
            w.writerow(
                dict(id=f"u{i:02d}", audio=f"wav/u{i:02d}.wav", text=f"Sentence {i}.", label=label, speaker="s1")
                | dict(session=1, gender="F")
            )
    return root / "manifest.csv"


def _extract(manifest, out, home, monkeypatch, *extra):
    monkeypatch.setenv("KSR_CACHE_DIR", str(home))
    args = ["extract", manifest, "--out", out, "--audio-encoder", "tiny-audio", "--text-encoder", "tiny-text"]
    return CliRunner().invoke(main, [str(a) for a in args] + ["--device", "cpu", "--no-progress", *extra])


WARNING = (
    "warning: 1 class(es) with fewer than 5 utterances in the cache: 'postive' (1); a mistyped label in the "
    "manifest? Correct it, or name the classes with --classes (other labels are then skipped), in a new cache"
)


def test_a_mistyped_label_is_counted_and_named(tmp_path, home, monkeypatch):
    manifest = _corpus(tmp_path / "corpus", LABELS)
    out = tmp_path / "cache"
    r = _extract(manifest, out, home, monkeypatch)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert (
        lines[0]
        == "12 manifest rows: 0 stored before, 12 extracted now, 0 skipped (label not in the classes), 0 failed"
    )
    assert lines[1] == "per class (this manifest's utterances in the cache): negative 5, positive 6, postive 1"
    assert lines[-1] == WARNING
    with open_cache(out, progress=False) as cache:
        assert cache.classes == ("negative", "positive", "postive")
    # A rerun counts what is stored already, and warns again.
    again = _extract(manifest, out, home, monkeypatch)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[1] == lines[1] and again.output.splitlines()[-1] == WARNING
    # Naming the classes skips the stray label: every class has enough, no warning.
    named = _extract(manifest, tmp_path / "named", home, monkeypatch, "--classes", "positive,negative")
    assert named.exit_code == 0, named.output
    assert named.output.splitlines()[1] == "per class (this manifest's utterances in the cache): positive 6, negative 5"
    assert "warning" not in named.output


def test_failed_utterances_are_not_counted(tmp_path, home, monkeypatch):
    manifest = _corpus(tmp_path / "corpus", ["a"] * 5 + ["b"] * 5)
    (tmp_path / "corpus" / "wav" / "u00.wav").unlink()  # one 'a' fails: 4 left in the cache
    r = _extract(manifest, tmp_path / "cache", home, monkeypatch)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[1] == "per class (this manifest's utterances in the cache): a 4, b 5"
    assert "'a' (4)" in r.output.splitlines()[-1] and "'b'" not in r.output.splitlines()[-1]


def test_merge_and_warnings():
    def part(counts):
        return ExtractSummary(cache_dir="c", classes=("x", "y", "z"), class_counts=counts)

    merged = ExtractSummary.merge([part({"x": 3, "y": 0, "z": 9}), part({"x": 1, "y": 2, "z": 0})])
    assert merged.class_counts == {"x": 4, "y": 2, "z": 9}
    assert merged.warnings()[0].startswith(
        f"2 class(es) with fewer than {MIN_CLASS_UTTERANCES} utterances in the cache: 'x' (4), 'y' (2); "
    )
    assert part({"x": 5, "y": 5, "z": 5}).warnings() == []
    assert (
        part({"x": 5, "y": 5})
        .warnings()[0]
        .startswith("1 class(es) with fewer than 5 utterances in the cache: 'z' (0);")
    )


def test_prepare_check_warns_of_a_mistyped_label_as_extract_does(tmp_path):
    manifest = _corpus(tmp_path / "corpus", LABELS)
    r = CliRunner().invoke(main, ["prepare", "check", str(manifest)])
    assert r.exit_code == 0, r.output
    assert (
        "warning: 1 label(s) with fewer than 5 utterances: 'postive' (1); a mistyped label? Correct it, or name "
        "the classes with ksr extract --classes (other labels are then skipped)" in r.output
    )


def test_labels_that_differ_only_in_case_are_refused_in_one_line(tmp_path, home, monkeypatch):
    manifest = _corpus(tmp_path / "corpus", ["ang"] * 5 + ["Ang"] + ["neu"] * 6)
    check = CliRunner().invoke(main, ["prepare", "check", str(manifest)])
    message = "labels 'Ang', 'ang' differ only in case (ksr would make them two classes): write one spelling"
    assert check.exit_code == 0 and f"warning: {message}" in check.output
    r = _extract(manifest, tmp_path / "cache", home, monkeypatch)
    assert r.exit_code == 1 and r.output.splitlines()[-1].startswith(f"Error: {manifest}: {message}"), r.output
    assert "Traceback" not in r.output and not (tmp_path / "cache").exists()
    ok = _extract(manifest, tmp_path / "cache", home, monkeypatch, "--classes", "ang,neu")  # the user decides
    assert ok.exit_code == 0, ok.output
