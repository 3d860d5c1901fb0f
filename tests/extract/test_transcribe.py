"""`ksr transcribe` and `ksr extract --text-column` with a tiny Whisper (random weights, built from a
config and saved to a folder, loaded through `hf:<folder>` as a released checkpoint is).

The tiny model's words are noise; what is checked is the plumbing: the columns (human text kept,
machine transcript added), the transcripts equal transformers' own Whisper run by hand, the
errors, the metadata (model, digest, WER), resuming after a kill, and caches made from either
transcript column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from ksr.cache import CacheMeta, open_cache
from ksr.cli import main
from ksr.extract.asr.recognizer import DECODING_FILES, AsrError, load_asr, parse_asr_spec
from ksr.extract.asr.transcribe import TranscribeError, side_files, transcribe_manifest
from ksr.extract.asr.wer import word_error_rate
from ksr.extract.audio import read_audio
from ksr.extract.corpora.demo import make_demo_corpus
from ksr.extract.corpora.manifest import ManifestError, read_manifest, write_manifest
from ksr.extract.encoders import load_encoder
from ksr.extract.encoders.hf import checkpoint_digest
from ksr.extract.encoders.tiny import save_tiny_whisper
from ksr.extract.pipeline import extract_corpus
from ksr.extract.summary import read_errors

BATCH = 3
GOOD = 7  # demo utterances in the manifest; one of them without a human transcript


class Interrupted(Exception):
    """Stands for a kill: raised from ``on_batch``, the run stops after a recorded batch."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("asr") / "tiny-whisper-asr", asr=True)


@pytest.fixture(scope="module")
def asr(folder):
    return load_asr(f"hf:{folder}", device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest of 7 demo utterances (one without human text), 3 whose audio fails (junk
    bytes, a missing file, 20 s over the 10 s limit) and one row the reader refuses."""
    root = tmp_path_factory.mktemp("corpus")
    demo = read_manifest(make_demo_corpus(root / "demo", seed=0, per_speaker=4))
    rows = [replace(u, extra={"note": f"n{i}"}) for i, u in enumerate(demo.rows[:GOOD])]
    rows[2] = replace(rows[2], text="")
    (root / "junk.wav").write_bytes(b"RIFF\x00\x00junk" * 10)
    sf.write(root / "long.wav", np.random.default_rng(0).standard_normal(16000 * 20).astype(np.float32) * 0.1, 16000)
    bad = [
        replace(rows[0], id=name, audio=root / wav, extra={"note": ""})
        for name, wav in (("junk", "junk.wav"), ("missing", "missing.wav"), ("long", "long.wav"))
    ]
    ordered = rows[:2] + bad[:1] + rows[2:5] + bad[1:] + rows[5:]
    path = write_manifest(root / "manifest.csv", ordered)
    with open(path, "a") as f:  # a row the reader refuses (its session is not a number)
        f.write("refused,demo/wav/x.wav,Hello.,neu,S1,one,F,\n")
    return path


def run(corpus, out, asr, **kw):
    return transcribe_manifest(corpus, out, asr, batch_size=BATCH, max_duration=10.0, progress=False, **kw)


@pytest.fixture(scope="module")
def done(corpus, asr, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "manifest-asr.csv"
    return out, run(corpus, out, asr)


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def by_hand(folder: Path, wav: np.ndarray) -> str:
    """transformers' Whisper, used directly: greedy decoding of one 30 s window."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    mel = processor.feature_extractor([wav], sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(mel, num_beams=1, do_sample=False)
    return " ".join(processor.batch_decode(ids, skip_special_tokens=True)[0].split())


# --- the output manifest -------------------------------------------------------------------------


def test_columns_kept_and_machine_transcript_added(corpus, done):
    out, summary = done
    with open(corpus, newline="") as f:
        header = next(csv.reader(f))
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == header + ["asr_text"]
    given = {r["id"]: r for r in rows_of(corpus)}
    written = rows_of(out)
    assert [r["id"] for r in written] == [r["id"] for r in rows_of(corpus) if r["id"] != "refused"]
    for r in written:
        for column in header:
            if column == "audio":  # written absolute: the new manifest lies in another folder
                assert Path(r["audio"]) == (corpus.parent / given[r["id"]]["audio"]).resolve()
            else:
                assert r[column] == given[r["id"]][column], (r["id"], column)
    asr_text = {r["id"]: r["asr_text"] for r in written}
    assert all(asr_text[i] == "" for i in ("junk", "missing", "long"))
    good = [r for r in written if r["id"] not in ("junk", "missing", "long")]
    assert len(good) == GOOD and all(r["asr_text"] for r in good)
    no_text = [r for r in good if not r["text"]]
    assert len(no_text) == 1 and no_text[0]["asr_text"]  # no human text: empty text, its machine one
    assert len({r["asr_text"] for r in good}) > 1  # what the tiny model hears depends on the audio
    assert (summary.total, summary.transcribed, summary.done_before) == (GOOD + 4, GOOD, 0)


def test_transcripts_equal_transformers_whisper_run_by_hand(folder, done):
    out, _ = done
    for r in rows_of(out)[:4]:
        if r["asr_text"]:
            assert r["asr_text"] == by_hand(folder, read_audio(r["audio"])), r["id"]


def test_errors_file_has_one_line_per_row_without_a_transcript(done):
    out, summary = done
    lines = {i: (stage, reason) for i, stage, reason in read_errors(side_files(out)["errors"])}
    assert set(lines) == {"junk", "missing", "long", "refused"}
    assert lines["junk"][0] == "audio" and "unreadable audio junk.wav" in lines["junk"][1]
    assert lines["missing"][0] == "audio" and lines["missing"][1].startswith("audio file not found:")
    assert lines["long"][0] == "audio" and "20.0 s of audio by its header, more than the 10 s" in lines["long"][1]
    assert lines["refused"] == ("manifest", "line 12: session 'one' is not an integer (digits 0-9)")
    assert summary.failed == {"manifest": 1, "audio": 3}
    assert not side_files(out)["progress"].exists()  # removed once the manifest is written


def test_metadata_records_the_model_its_digest_and_the_wer(corpus, folder, done):
    out, summary = done
    meta = json.loads(side_files(out)["meta"].read_text())
    assert meta["asr"]["name"] == "hf:tiny-whisper-asr" and meta["asr"]["model_type"] == "whisper"
    assert meta["asr"]["checkpoint_digest"] == checkpoint_digest(folder, DECODING_FILES)
    assert meta["asr"]["checkpoint_digest"] != checkpoint_digest(folder)  # the decoding settings count
    assert meta["manifest_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert (meta["column"], meta["rows"], meta["transcribed"], meta["failed"]) == (
        "asr_text",
        GOOD + 3,
        GOOD,
        {"manifest": 1, "audio": 3},
    )
    # WER over the 6 rows with both transcripts, against an independent sum of their edits.
    pairs = [(r["text"], r["asr_text"]) for r in rows_of(out) if r["text"] and r["asr_text"]]
    assert len(pairs) == GOOD - 1
    expected = word_error_rate(pairs)
    assert meta["wer"]["utterances"] == GOOD - 1
    assert meta["wer"]["reference_words"] == sum(len(t.replace(",", " ").replace("!", " ").split()) for t, _ in pairs)
    assert meta["wer"]["wer"] == pytest.approx(expected.rate) and summary.wer.edits == expected.edits
    assert f"WER against the human text: {100 * expected.rate:.1f}%" in summary.format()


def test_digest_follows_the_generation_config(folder, asr, tmp_path):
    copy = Path(shutil.copytree(folder, tmp_path / "tiny-whisper-asr"))
    assert load_asr(f"hf:{copy}", device="cpu").digest == asr.digest  # the bytes, not the path
    config = json.loads((copy / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps({**config, "max_length": 6}))
    changed = load_asr(f"hf:{copy}", device="cpu")
    assert changed.digest != asr.digest
    silence = [np.zeros(16000, np.float32)]
    assert len(changed.transcribe(silence)[0].split()) <= 6 < len(asr.transcribe(silence)[0].split())


# --- resuming ------------------------------------------------------------------------------------


def interrupt_after(batches: int):
    def on_batch(done: int) -> None:
        on_batch.calls += 1
        if on_batch.calls == batches:
            raise Interrupted

    on_batch.calls = 0
    return on_batch


def test_resume_after_a_kill_equals_an_uninterrupted_run(corpus, asr, done, tmp_path):
    out = tmp_path / "manifest-asr.csv"
    with pytest.raises(Interrupted):
        run(corpus, out, asr, on_batch=interrupt_after(2))
    progress = side_files(out)["progress"]
    assert progress.is_file() and not out.exists()
    assert len(progress.read_text().splitlines()) == 1 + 2 * BATCH
    summary = run(corpus, out, asr)
    # Batches of 3 in manifest order: the first two hold 5 good rows and 'junk'; 2 good rows are
    # left, and the first batch is done again for 'junk' (failed rows are retried).
    assert (summary.done_before, summary.transcribed) == (5, 2)
    assert out.read_bytes() == done[0].read_bytes()
    assert read_errors(side_files(out)["errors"]) == read_errors(side_files(done[0])["errors"])
    assert not progress.exists()


def test_resume_redoes_a_batch_the_kill_cut_and_drops_a_torn_line(corpus, asr, done, tmp_path):
    out = tmp_path / "manifest-asr.csv"
    with pytest.raises(Interrupted):
        run(corpus, out, asr, on_batch=interrupt_after(2))
    progress = side_files(out)["progress"]
    lines = progress.read_text().splitlines(keepends=True)
    # The kill came in the middle of the second batch's write: two of its rows are lost, the
    # last line torn.
    progress.write_text("".join(lines[:-2]) + lines[-2][:17])
    summary = run(corpus, out, asr)
    assert summary.done_before == 3  # r0, r1 ('junk' failed), r2
    assert out.read_bytes() == done[0].read_bytes()


def test_resume_with_other_settings_is_refused(corpus, asr, tmp_path):
    out = tmp_path / "manifest-asr.csv"
    with pytest.raises(Interrupted):
        run(corpus, out, asr, on_batch=interrupt_after(1))
    with pytest.raises(TranscribeError, match=r"a killed run with another batch_size \(3, now 2\) left this file"):
        transcribe_manifest(corpus, out, asr, batch_size=2, progress=False)
    with pytest.raises(TranscribeError, match=r"another column \('asr_text', now 'whisper'\)"):
        run(corpus, out, asr, column="whisper")


def test_sigkill_through_the_command_then_the_same_command_finishes_it(corpus, folder, done, tmp_path):
    out = tmp_path / "manifest-asr.csv"
    cmd = [str(Path(sys.executable).parent / "ksr"), "transcribe", str(corpus), "--asr", f"hf:{folder}"]
    cmd += ["--out", str(out), "--batch-size", str(BATCH), "--max-duration", "10", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KSR_TEST_KILL_AT": "transcribe-batch:3"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    progress = side_files(out)["progress"]
    assert not out.exists() and len(progress.read_text().splitlines()) == 1 + 2 * BATCH
    env.pop("KSR_TEST_KILL_AT")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.startswith("11 manifest rows: 2 transcribed now, 5 by an earlier run, 4 failed")
    assert out.read_bytes() == done[0].read_bytes() and not progress.exists()


def test_a_progress_file_killed_before_its_first_line_starts_afresh(corpus, asr, done, tmp_path):
    out = tmp_path / "manifest-asr.csv"
    side_files(out)["progress"].write_bytes(b'{"kind": "ksr-asr-pro')
    assert run(corpus, out, asr).done_before == 0
    assert out.read_bytes() == done[0].read_bytes()


def test_progress_records_survive_any_character(tmp_path):
    from ksr.extract.asr.transcribe import _Progress

    header = {"kind": "ksr-asr-progress", **dict.fromkeys(("manifest_sha256", "checkpoint_digest", "language"))}
    header.update(column="asr_text", batch_size=1)
    text = 'line\u2028separator\x85next \u00e9\n"quoted"'  # characters str.splitlines() would split on
    first = _Progress(tmp_path / "p.jsonl", header)
    first.append([{"id": "a", "text": text}, {"id": "b\u2029", "stage": "asr", "reason": "r"}])
    first.close()
    again = _Progress(tmp_path / "p.jsonl", header)
    again.close()
    assert again.records == {
        "a": {"id": "a", "text": text},
        "b\u2029": {"id": "b\u2029", "stage": "asr", "reason": "r"},
    }


def test_a_second_run_on_the_same_output_is_refused(corpus, asr, tmp_path):
    import fcntl

    out = tmp_path / "manifest-asr.csv"
    with open(side_files(out)["progress"], "ab") as held:  # a live run holds this lock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(TranscribeError, match=r"another ksr transcribe is writing this output now"):
            run(corpus, out, asr)
    assert not side_files(out)["errors"].exists()  # refused before it touched anything


# --- the command ---------------------------------------------------------------------------------


def test_cli_transcribes_and_prints_the_summary(corpus, folder, done, tmp_path):
    out = tmp_path / "m.csv"
    args = ["transcribe", str(corpus), "--asr", f"hf:{folder}", "--out", str(out), "--batch-size", "3"]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--max-duration", "10", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (
        result.output.splitlines()[0]
        == "11 manifest rows: 7 transcribed now, 0 by an earlier run, 4 failed (manifest 1, audio 3), 0 with no words"
    )
    assert "WER against the human text:" in result.output
    assert [r["asr_text"] for r in rows_of(out)] == [r["asr_text"] for r in rows_of(done[0])]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("whisper-tiny", "unknown ASR spec 'whisper-tiny': use hf:<hub id or folder of a Whisper checkpoint>"),
        ("hf:/nonexistent/whisper", "ASR hf:/nonexistent/whisper: model folder not found: /nonexistent/whisper"),
        ("hf:x@layer=3", "ASR spec 'hf:x@layer=3': unknown option @layer (known: @language, @revision)"),
        (
            "hf:x@language=",
            "ASR spec 'hf:x@language=': @language has no value (give one, e.g. @language=en, or drop it)",
        ),
        (
            "hf:x@revision= @language=en",
            "ASR spec 'hf:x@revision= @language=en': @revision has no value (give one, e.g. @revision=<commit>, or drop it)",
        ),
    ],
)
def test_bad_asr_specs_are_one_line(corpus, tmp_path, spec, message):
    result = CliRunner().invoke(main, ["transcribe", str(corpus), "--asr", spec, "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 1 and result.output == f"Error: {message}\n"


def test_a_model_that_is_not_whisper_is_refused(corpus, tmp_path):
    from ksr.extract.encoders.tiny import ensure_tiny

    text_model = ensure_tiny("tiny-text", tmp_path / "tiny")
    with pytest.raises(AsrError, match=r"not a Whisper checkpoint"):
        load_asr(f"hf:{text_model}", device="cpu")


def test_output_over_the_input_or_an_existing_column_is_refused(corpus, asr, done):
    with pytest.raises(TranscribeError, match=r"is the input manifest"):
        run(corpus, corpus, asr)
    with pytest.raises(TranscribeError, match=r"already has a column 'note': name the machine transcript's column"):
        run(corpus, corpus.with_name("x.csv"), asr, column="note")
    with pytest.raises(TranscribeError, match=r"already has a column 'asr_text'"):
        run(done[0], done[0].with_name("again.csv"), asr)


def test_a_checkpoint_without_tokenizer_files_is_refused(tmp_path):
    encoder_only = save_tiny_whisper(tmp_path / "tiny-whisper", asr=False)  # weights, no tokenizer
    with pytest.raises(AsrError, match=r"its tokenizer knows 1 tokens for a model that writes 16 \(tokenizer files"):
        load_asr(f"hf:{encoder_only}", device="cpu")


def test_language_is_checked_when_the_model_loads(folder, tmp_path):
    with pytest.raises(
        AsrError, match=r"^ASR hf:\S+@language=en: this checkpoint names no languages .*: drop @language$"
    ):
        load_asr(f"hf:{folder}@language=en", device="cpu")
    copy = Path(shutil.copytree(folder, tmp_path / "multilingual"))
    config = json.loads((copy / "generation_config.json").read_text())
    config["lang_to_id"] = {"<|en|>": 3, "<|de|>": 4}  # as a multilingual Whisper lists them
    (copy / "generation_config.json").write_text(json.dumps(config))
    for language in ("en", "German", "<|de|>"):
        assert load_asr(f"hf:{copy}@language={language}", device="cpu").spec.language == language
    with pytest.raises(AsrError, match=r"language 'xx' is not one of its 2: de, en, \.\.\.$"):
        load_asr(f"hf:{copy}@language=xx", device="cpu")


def test_a_run_stopped_by_a_wrong_option_before_any_transcript_starts_afresh(corpus, asr, done, tmp_path):
    out = tmp_path / "manifest-asr.csv"
    header = {"kind": "ksr-asr-progress", "batch_size": 99}
    lines = [header, {"id": "junk", "stage": "audio", "reason": "r"}]
    side_files(out)["progress"].write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert run(corpus, out, asr).done_before == 0
    assert out.read_bytes() == done[0].read_bytes()


def test_spec_options():
    assert parse_asr_spec("hf:/m/w@x@language=en@revision=abc") == parse_asr_spec(" hf:/m/w@x@revision=abc@language=en")
    spec = parse_asr_spec("hf:/m/w@x@language=en")
    assert (spec.source, spec.language, spec.revision, str(spec)) == ("/m/w@x", "en", None, "hf:/m/w@x@language=en")
    for empty in ("hf:/m/w@language=", "hf:/m/w@language=  @revision=abc"):
        with pytest.raises(
            AsrError, match=r"^ASR spec .*: @language has no value \(give one, e\.g\. @language=en, or drop it\)$"
        ):
            parse_asr_spec(empty)


# --- caches from either transcript ---------------------------------------------------------------


def test_manifest_text_column(done):
    out, _ = done
    with pytest.raises(ManifestError, match=r"line 5 \(Ses01F_demo_F002\): empty transcript$"):
        read_manifest(out)  # the row without human text
    machine = read_manifest(out, strict=False, text_column="asr_text")
    assert machine.text_column == "asr_text"
    assert {p.id: p.reason for p in machine.problems} == {
        i: "empty transcript in column asr_text" for i in ("junk", "missing", "long")
    }
    assert [u.text for u in machine.rows] == [r["asr_text"] for r in rows_of(out) if r["asr_text"]]
    assert len(read_manifest(out, text_column=None).rows) == GOOD + 3  # no transcript required
    with pytest.raises(ManifestError, match=r"no column 'whisper' to take the transcripts from$"):
        read_manifest(out, text_column="whisper")


def test_caches_from_human_and_machine_text(done, tmp_path):
    out, _ = done
    root = tmp_path / "tiny"
    encoders = [load_encoder(n, tiny_root=root, device="cpu") for n in ("tiny-audio", "tiny-text")]
    kw = dict(dtype="float32", progress=False, max_duration=10.0)
    extract_corpus(out, tmp_path / "human", *encoders, **kw)
    extract_corpus(out, tmp_path / "machine", *encoders, text_column="asr_text", **kw)
    human, machine = open_cache(tmp_path / "human", progress=False), open_cache(tmp_path / "machine", progress=False)
    assert (human.meta.text_column, machine.meta.text_column) == ("text", "asr_text")
    written = {r["id"]: r for r in rows_of(out)}
    assert {i: t for i, t in zip(machine.ids, machine.transcripts, strict=True)} == {
        i: r["asr_text"] for i, r in written.items() if r["asr_text"]
    }
    assert {i: t for i, t in zip(human.ids, human.transcripts, strict=True)} == {
        i: r["text"] for i, r in written.items() if r["text"] and r["asr_text"]
    }
    both = sorted(set(human.ids) & set(machine.ids))
    assert len(both) == GOOD - 1
    h = human.batch([human.ids.index(i) for i in both])
    m = machine.batch([machine.ids.index(i) for i in both])
    # The same audio features, up to the order of float sums: the two caches leave out different
    # rows, so their batches differ, and with two threads BLAS blocks the sums by batch shape
    # (seen: 3.6e-7; the tolerance is test_extract_encoders.py's batched-vs-single one).
    assert torch.allclose(h.audio, m.audio, rtol=0, atol=2e-5)
    for k in range(len(both)):  # other words, other text features
        assert not torch.equal(h.text[k], m.text[k])
    errors = {i: reason for i, _, reason in read_errors(tmp_path / "machine" / "errors-w0.tsv")}
    assert errors["junk"].endswith("empty transcript in column asr_text")


def test_cli_extract_records_the_text_column(done, tmp_path):
    out, _ = done
    env = {"KSR_CACHE_DIR": str(tmp_path)}
    args = ["extract", str(out), "--out", str(tmp_path / "c"), "--audio-encoder", "tiny-audio"]
    args += ["--text-encoder", "tiny-text", "--no-progress", "--max-duration", "10"]
    result = CliRunner().invoke(main, [*args, "--text-column", "asr_text"], env=env)
    assert result.exit_code == 0, result.output
    info = CliRunner().invoke(main, ["cache", "info", str(tmp_path / "c")])
    assert "transcripts from column asr_text" in info.output
    again = CliRunner().invoke(main, args, env=env)  # the same cache from the other column
    assert again.exit_code == 1
    assert again.output.endswith("text_column: cache has 'asr_text', expected 'text'\n")
    missing = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "d"), "--text-column", "nope"], env=env)
    assert missing.exit_code == 1 and missing.output == f"Error: {out}: no column 'nope' to take the transcripts from\n"


def test_older_cache_meta_reads_as_human_text():
    meta = CacheMeta(
        corpus="c", classes=("a", "b"), audio_encoder={"name": "x", "dim": 2}, text_encoder={"name": "y", "dim": 2}
    )
    old = meta.to_dict()
    del old["text_column"]
    assert CacheMeta.from_dict(old).text_column == "text"
    assert CacheMeta.from_dict(meta.to_dict()) == meta
