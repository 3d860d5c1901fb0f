"""`ksr predict` in batch mode (ksr.batch_predict, ksr.submission): a tiny demo run of two folds,
then predictions on many files checked against the one-utterance path, ensembles against their
members, a killed run against an uninterrupted one, the submission files, and the refusals."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.tiny import TINY_MODEL

from ksr.batch_predict import BatchRequest, predict_batch, side_file
from ksr.cli import main
from ksr.demo import AUDIO_FRAMES
from ksr.extract.corpora.demo import make_demo_corpus
from ksr.extract.corpora.manifest import read_manifest
from ksr.extract.pipeline import extract_corpus
from ksr.fuse import KSTransformer, load_checkpoint, load_model, save_checkpoint
from ksr.fuse.train.inference import Outputs
from ksr.predict import PredictError, predict_one
from ksr.submission import attributes_file, check_submission, write_batch_output


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 40-utterance demo corpus, its tiny-encoder cache, and a tiny run of folds 1 and 2 (1 epoch)."""
    root = tmp_path_factory.mktemp("batch")
    env = {"KSR_CACHE_DIR": str(root / "k")}
    manifest = make_demo_corpus(root / "data", seed=0, per_speaker=4)
    tiny = root / "k" / "tiny"
    extract_corpus(
        manifest,
        root / "cache",
        "tiny-audio",
        "tiny-text",
        corpus="demo",
        max_audio_len=AUDIO_FRAMES,
        device="cpu",
        progress=False,
        tiny_root=tiny,
    )
    args = ["train", "--cache", str(root / "cache"), "--run", str(root / "run"), "--epochs", "1", *TINY_MODEL]
    result = CliRunner().invoke(main, [*args, "--fold", "1", "--fold", "2", "--device", "cpu", "--no-baseline"])
    assert result.exit_code == 0, result.output
    rows = read_manifest(manifest).rows
    small = root / "small.csv"  # a prediction manifest: id, audio, text only (8 utterances)
    with open(small, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text"])
        for u in rows[::5]:
            w.writerow([u.id, u.audio, u.text])
    return {
        "root": root,
        "env": env,
        "tiny": tiny,
        "run": root / "run",
        "ckpt": root / "run" / "seed123" / "fold1" / "best.pt",
        "rows": rows[::5],
        "small": small,
    }


def batch(demo, out: Path | None = None, **changes) -> BatchRequest:
    base = dict(out=out, manifest=demo["small"], checkpoint=demo["ckpt"], device="cpu", tiny_root=demo["tiny"])
    base["progress"] = False
    return BatchRequest(**{**base, **changes})


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def probabilities(rows: list[dict[str, str]], classes) -> np.ndarray:
    return np.array([[float(r["p_" + c]) for c in classes] for r in rows])


def test_batch_agrees_with_one_utterance_predictions(demo, tmp_path):
    result = predict_batch(batch(demo, tmp_path / "preds.csv"))
    rows = read_csv(tmp_path / "preds.csv")
    assert [r["id"] for r in rows] == [u.id for u in demo["rows"]] and result.predicted == len(rows) == 8
    for u, r in zip(demo["rows"], rows, strict=True):
        one = predict_one(demo["ckpt"], u.audio, u.text, device="cpu", tiny_root=demo["tiny"])
        got = probabilities([r], one.classes)[0]
        np.testing.assert_allclose(got, list(one.probabilities.values()), rtol=0, atol=1e-5)
        assert r["label"] == one.label
    assert list(rows[0]) == ["id", "label", "p_ang", "p_neu", "p_hap", "p_sad"]
    assert not side_file(tmp_path / "preds.csv", "work").exists()  # the features are removed once written


def test_ensemble_is_the_mean_of_its_members_and_of_one_the_member(demo, tmp_path):
    predict_batch(batch(demo, tmp_path / "fold1.csv"))
    fold2 = demo["run"] / "seed123" / "fold2" / "best.pt"
    predict_batch(batch(demo, tmp_path / "fold2.csv", checkpoint=fold2))
    predict_batch(batch(demo, tmp_path / "both.csv", checkpoint=None, run=demo["run"]))
    classes = load_checkpoint(demo["ckpt"])["meta"]["cache_meta"]["classes"]
    members = [probabilities(read_csv(tmp_path / f"fold{k}.csv"), classes) for k in (1, 2)]
    both = read_csv(tmp_path / "both.csv")
    np.testing.assert_allclose(probabilities(both, classes), (members[0] + members[1]) / 2, rtol=0, atol=1e-8)
    assert [r["label"] for r in both] == [classes[i] for i in np.argmax(members[0] + members[1], axis=1)]
    voted = (tmp_path / "both.csv.models.json").read_text()
    assert "seed123/fold1" in voted and "seed123/fold2" in voted

    one = tmp_path / "one-run"  # a run that holds fold 1 only: its ensemble is that model
    shutil.copytree(demo["ckpt"].parent, one / "seed123" / "fold1")
    predict_batch(batch(demo, tmp_path / "one.csv", checkpoint=None, run=one))
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "fold1.csv").read_text()


class Killed(Exception):
    pass


def test_a_killed_run_resumed_writes_the_same_csv(demo, tmp_path):
    whole = tmp_path / "whole.csv"
    predict_batch(batch(demo, whole, batch_seconds=2.0))

    def kill(done: int) -> None:
        if done >= 3:
            raise Killed

    out = tmp_path / "resumed.csv"
    with pytest.raises(Killed):
        predict_batch(batch(demo, out, batch_seconds=2.0, on_batch=kill))
    assert not out.exists() and side_file(out, "work").is_dir()  # features so far are kept
    stored = []
    predict_batch(batch(demo, out, batch_seconds=2.0, on_batch=stored.append))
    assert stored and stored[-1] < 8  # only the rest was extracted
    assert out.read_text() == whole.read_text()


def test_failed_files_get_one_line_each_and_the_rest_go_on(demo, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    bad = tmp_path / "bad.csv"
    good = demo["rows"][:2]
    lines = ["id,audio,text", *(f"{u.id},{u.audio},{u.text}" for u in good)]
    lines += [
        f"gone,{tmp_path / 'nope.wav'},hello",
        f"empty,{tmp_path / 'empty.wav'},hello",
        f"notext,{good[0].audio},",
    ]
    bad.write_text("\n".join(lines) + "\n")
    args = ["predict", "--checkpoint", str(demo["ckpt"]), "--manifest", str(bad), "--out", str(tmp_path / "p.csv")]
    result = CliRunner().invoke(main, [*args, "--device", "cpu"], env=demo["env"])
    assert result.exit_code == 0, result.output + result.stderr
    assert [r["id"] for r in read_csv(tmp_path / "p.csv")] == [u.id for u in good]
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert [line.split()[1] for line in failed] == ["gone", "empty", "notext"]
    assert "failed: notext (manifest): " in failed[2] and "empty transcript" in failed[2]
    errors = (tmp_path / "p.csv.errors.tsv").read_text().splitlines()
    assert errors[0] == "id\tstage\treason" and [e.split("\t")[0] for e in errors[1:]] == ["gone", "empty", "notext"]
    assert "2 utterance(s) with 1 model(s), 3 failed" in result.output


def test_an_audio_only_model_reads_a_folder(demo, tmp_path):
    raw = load_checkpoint(demo["ckpt"])
    torch.manual_seed(0)
    audio_only = KSTransformer(load_model(demo["ckpt"]).cfg.replace(modalities="audio"))
    ckpt = save_checkpoint(tmp_path / "audio-only.pt", audio_only, raw["meta"])
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    for i, u in enumerate(demo["rows"][:3]):
        shutil.copy(u.audio, folder / ("sub" if i == 2 else "") / f"clip{i}.wav")
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "folder.csv"
    predict_batch(batch(demo, out, manifest=None, folder=folder, checkpoint=ckpt))
    rows = read_csv(out)
    assert [r["id"] for r in rows] == ["clip0.wav", "clip1.wav", "sub/clip2.wav"]
    for i, r in enumerate(rows):
        one = predict_one(ckpt, demo["rows"][i].audio, None, device="cpu", tiny_root=demo["tiny"])
        np.testing.assert_allclose(probabilities([r], one.classes)[0], list(one.probabilities.values()), atol=1e-5)
    assert '"name": "unused"' in (tmp_path / "folder.csv.models.json").read_text()  # no text encoder loaded


def test_msp_podcast_submission_columns_and_values(demo, tmp_path):
    out = tmp_path / "submission.csv"
    predict_batch(batch(demo, tmp_path / "plain.csv"))
    predict_batch(batch(demo, out, format="msp-podcast"))
    plain = read_csv(tmp_path / "plain.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == "FileName,EmoClass"
    letters = {"ang": "A", "hap": "H", "neu": "N", "sad": "S"}
    assert lines[1:] == [
        f"{Path(u.audio).name},{letters[r['label']]}" for u, r in zip(demo["rows"], plain, strict=True)
    ]
    assert not attributes_file(out).exists()  # the model predicts no attributes


def test_submission_attributes_file_and_its_scale(tmp_path):
    rows = [type("U", (), {"audio": Path(f"/a/MSP-PODCAST_0001_000{i}.wav"), "id": str(i)})() for i in (1, 2)]
    probs = np.array([[0.7, 0.3], [0.2, 0.8]])
    attrs = np.array([[2.25, 4.0, 6.5], [1.0, 7.0, 3.123456]])
    out = tmp_path / "sub.csv"
    files = write_batch_output(
        out, "msp-podcast", rows, Outputs(probs, attrs, ("arousal", "valence", "dominance")), ("ang", "sad")
    )
    assert files == [out, tmp_path / "sub.attributes.csv"]
    assert out.read_text() == "FileName,EmoClass\nMSP-PODCAST_0001_0001.wav,A\nMSP-PODCAST_0001_0002.wav,S\n"
    assert files[1].read_text() == (
        "FileName,EmoAct,EmoVal,EmoDom\n"
        "MSP-PODCAST_0001_0001.wav,2.2500,4.0000,6.5000\n"
        "MSP-PODCAST_0001_0002.wav,1.0000,7.0000,3.1235\n"
    )
    plain = write_batch_output(
        tmp_path / "p.csv", "csv", rows, Outputs(probs, attrs, ("arousal", "valence", "dominance")), ("ang", "sad")
    )
    assert plain[0].read_text().splitlines()[:2] == [
        "id,label,p_ang,p_sad,arousal,valence,dominance",
        "1,ang,0.70000000,0.30000000,2.250000,4.000000,6.500000",
    ]
    said = []  # beyond the 1-7 scale: clipped to its ends, and said
    over = Outputs(probs, np.array([[0.5, 7.25, 7.0], [1.0, 1.0, 1.0]]), ("activation", "valence", "dominance"))
    write_batch_output(out, "msp-podcast", rows, over, ("ang", "sad"), say=said.append)
    assert files[1].read_text().splitlines()[1] == "MSP-PODCAST_0001_0001.wav,1.0000,7.0000,7.0000"
    assert said == ["warning: 2 attribute value(s) beyond MSP-Podcast's 1-7 scale clipped to its ends"]
    with pytest.raises(PredictError, match=r"^--format msp-podcast: attribute\(s\) joy have no MSP-Podcast column"):
        write_batch_output(out, "msp-podcast", rows, Outputs(probs, attrs[:, :1], ("joy",)), ("ang", "sad"))


def test_a_model_of_attributes_only_writes_no_class_columns(tmp_path):
    rows = [type("U", (), {"audio": Path(f"/a/MSP-PODCAST_0001_000{i}.wav"), "id": str(i)})() for i in (1, 2)]
    only = Outputs(None, np.array([[2.25, 4.0, 6.5], [1.0, 7.0, 3.5]]), ("activation", "valence", "dominance"))
    plain = write_batch_output(tmp_path / "p.csv", "csv", rows, only, ("ang", "sad"))[0].read_text()
    assert plain.splitlines() == [
        "id,activation,valence,dominance",
        "1,2.250000,4.000000,6.500000",
        "2,1.000000,7.000000,3.500000",
    ]
    out = tmp_path / "sub.csv"  # the submission: the attributes' file is OUT itself
    assert write_batch_output(out, "msp-podcast", rows, only, ("ang", "sad")) == [out]
    assert out.read_text().splitlines()[:2] == [
        "FileName,EmoAct,EmoVal,EmoDom",
        "MSP-PODCAST_0001_0001.wav,2.2500,4.0000,6.5000",
    ]


def test_refusals_are_one_line(demo, tmp_path):
    with pytest.raises(PredictError, match=r"^--format msp-podcast: class\(es\) joy have no MSP-Podcast letter"):
        check_submission("msp-podcast", ("ang", "joy"))
    (tmp_path / "taken.csv").write_text("mine")
    cases = [
        (dict(out=tmp_path / "taken.csv"), rf"^--out {tmp_path / 'taken.csv'} exists; pass --force to overwrite it$"),
        (dict(folder=tmp_path), r"^batch prediction reads --manifest M\.csv or --folder DIR \(one of them\)$"),
        (dict(checkpoint=None), r"^name the model\(s\): --checkpoint PATH \(one model\) or --run RUN"),
        (dict(checkpoint=None, run=tmp_path), rf"^{tmp_path}: no trained fold"),
        (dict(text_column="words"), r"small\.csv: no column 'words' to take the transcripts from; name it with"),
        (dict(manifest=None, folder=tmp_path), r"the model reads transcripts; a folder has none: name an ASR model"),
    ]
    for changes, message in cases:
        with pytest.raises(PredictError, match=message):
            predict_batch(batch(demo, **{"out": tmp_path / "p.csv", **changes}))
    assert (tmp_path / "taken.csv").read_text() == "mine"
    base = ["predict", "--checkpoint", str(demo["ckpt"])]
    for args, message in (
        ([*base, "--manifest", str(demo["small"])], "Error: batch mode writes its predictions to --out FILE.csv"),
        ([*base, "--manifest", str(demo["small"]), "--out", "x.csv", "--audio", "a.wav"], "Error: --audio, --text"),
        (["predict", "--audio", "a.wav"], "Error: name the model with --checkpoint PATH"),
    ):
        result = CliRunner().invoke(main, args, env=demo["env"])
        assert result.exit_code == 1 and result.output.startswith(message) and len(result.output.splitlines()) == 1


def test_asr_transcribes_a_folder_for_a_fused_model(demo, tmp_path):
    from ksr.extract.encoders.tiny import save_tiny_whisper

    asr = f"hf:{save_tiny_whisper(tmp_path / 'tiny-whisper-asr', asr=True)}"
    folder = tmp_path / "clips"
    folder.mkdir()
    for i, u in enumerate(demo["rows"][:3]):
        shutil.copy(u.audio, folder / f"clip{i}.wav")
    out = tmp_path / "heard.csv"
    predict_batch(batch(demo, out, manifest=None, folder=folder, asr=asr, keep_features=True))
    heard = {r["id"]: r["asr_text"] for r in read_csv(side_file(out, "work") / "manifest-asr.csv")}
    rows = read_csv(out)
    assert [r["id"] for r in rows] == ["clip0.wav", "clip1.wav", "clip2.wav"]
    for r in rows:  # the batch read the transcripts the ASR model heard
        one = predict_one(demo["ckpt"], folder / r["id"], heard[r["id"]], device="cpu", tiny_root=demo["tiny"])
        np.testing.assert_allclose(probabilities([r], one.classes)[0], list(one.probabilities.values()), atol=1e-5)
    assert f'"transcripts": "asr {asr}"' in (tmp_path / "heard.csv.models.json").read_text()


def test_force_overwrites_and_the_duration_guard_fails_files_one_by_one(demo, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("old")
    result = predict_batch(batch(demo, out, force=True, max_duration=0.5))
    assert result.predicted == 0 and len(result.failed) == 8
    assert all(stage == "audio" and "(--max-duration raises the limit)" in why for _, stage, why in result.failed)
    assert out.read_text() == "id,label,p_ang,p_neu,p_hap,p_sad\n"


def test_ensemble_outputs_average_probabilities_and_attributes():
    from ksr.fuse.train.inference import ensemble_outputs

    names = ("arousal", "valence", "dominance")
    a = Outputs(np.array([[0.9, 0.1]]), np.array([[2.0, 4.0, 6.0]]), names)
    b = Outputs(np.array([[0.3, 0.7]]), np.array([[4.0, 5.0, 1.0]]), names)
    mean = ensemble_outputs([a, b])
    np.testing.assert_allclose(mean.probs, [[0.6, 0.4]])
    np.testing.assert_allclose(mean.attributes, [[3.0, 4.5, 3.5]])
    assert mean.attribute_names == names
    assert ensemble_outputs([a]).probs.tolist() == a.probs.tolist()
    assert ensemble_outputs([a, Outputs(b.probs)]).attributes is None  # only when every member has them
    assert ensemble_outputs([a, Outputs(None, b.attributes, names)]).probs is None
    with pytest.raises(ValueError, match="at least one member"):
        ensemble_outputs([])


def test_a_model_of_classes_and_attributes_writes_both(demo, tmp_path):
    raw = load_checkpoint(demo["ckpt"])
    torch.manual_seed(0)
    names = ("activation", "valence", "dominance")
    both = KSTransformer(load_model(demo["ckpt"]).cfg.replace(task="both", attributes=names))
    run = tmp_path / "run"
    for fold in (1, 2):  # an ensemble of two such models (the same weights: the mean is the model)
        save_checkpoint(run / "seed1" / f"fold{fold}" / "best.pt", both, raw["meta"])
    out = tmp_path / "both.csv"
    predict_batch(batch(demo, out, checkpoint=None, run=run))
    rows = read_csv(out)
    assert list(rows[0]) == ["id", "label", "p_ang", "p_neu", "p_hap", "p_sad", *names]
    for u, r in zip(demo["rows"], rows, strict=True):
        one = predict_one(run / "seed1" / "fold1" / "best.pt", u.audio, u.text, device="cpu", tiny_root=demo["tiny"])
        np.testing.assert_allclose([float(r[a]) for a in names], [one.attributes[a] for a in names], atol=1e-5)
        np.testing.assert_allclose(probabilities([r], one.classes)[0], list(one.probabilities.values()), atol=1e-5)
    # Members of other tasks do not make one ensemble.
    save_checkpoint(run / "seed1" / "fold2" / "best.pt", load_model(demo["ckpt"]), raw["meta"])
    with pytest.raises(
        PredictError, match=r"fold2/best\.pt: differs from .*fold1/best\.pt \(task\); the models of an ensemble must"
    ):
        predict_batch(batch(demo, tmp_path / "mixed.csv", checkpoint=None, run=run))


def test_a_speaker_normalised_model_uses_each_utterance_alone_without_speakers(demo, tmp_path):
    raw = load_checkpoint(demo["ckpt"])
    normalised = KSTransformer(load_model(demo["ckpt"]).cfg.replace(speaker_norm="speaker"))
    normalised.load_state_dict(load_model(demo["ckpt"]).state_dict())
    ckpt = save_checkpoint(tmp_path / "norm.pt", normalised, raw["meta"])
    out = tmp_path / "norm.csv"
    # The manifest has no speaker column. Each utterance encoded alone (batch_seconds below any
    # length): standardised features magnify the float16 step a batch's padding moves.
    predict_batch(batch(demo, out, checkpoint=ckpt, batch_seconds=0.01))
    rows = read_csv(out)
    for u, r in zip(demo["rows"], rows, strict=True):
        one = predict_one(ckpt, u.audio, u.text, device="cpu", tiny_root=demo["tiny"])
        assert one.normalisation  # predict_one standardised the utterance with its own statistics
        np.testing.assert_allclose(probabilities([r], one.classes)[0], list(one.probabilities.values()), atol=1e-5)
