"""The extraction loop: manifest -> encoders -> cache, bad items, resuming, ranks.

Tolerance for comparing two extractions of the same utterance (batched vs one at a time, an
interrupted run continued vs an uninterrupted one): caches stored in float32, ATOL = 2e-5, as in
test_extract_encoders.py. The tiny models batch with an attention mask; a batch only reorders
floating-point sums (other matrix shapes), a few ulp per operation on O(1) features (observed
<= ~1.5e-6), while a wrong mask or a mixed-up utterance moves features by > 1e-2.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from support.nodes import run_two_nodes

from ksr.cache import open_cache, verify_cache
from ksr.cli import main
from ksr.common import PAPER_CLASSES, Ranks
from ksr.extract.audio import read_audio
from ksr.extract.corpora.manifest import REQUIRED_COLUMNS
from ksr.extract.encoders import load_encoder
from ksr.extract.pipeline import ExtractError, default_classes, extract_corpus
from ksr.extract.plan import plan_batches, rank_share
from ksr.extract.summary import read_errors

ATOL = 2e-5
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ksr-home")


@pytest.fixture(scope="module")
def encoders(tiny_dir):
    root = tiny_dir / "tiny"  # where KSR_CACHE_DIR=tiny_dir puts them, for subprocesses
    return (
        load_encoder("tiny-audio", tiny_root=root, device="cpu"),
        load_encoder("tiny-text", tiny_root=root, device="cpu"),
    )


def _samples_for(audio, frames: int) -> int:
    """The fewest 16 kHz samples that give ``frames`` frames."""
    n = frames * 160
    while audio.num_frames(n - 1) >= frames:
        n -= 1
    while audio.num_frames(n) < frames:
        n += 1
    return n


def _text_of(text, tokens: int) -> str:
    """A sentence that the tiny tokenizer turns into exactly ``tokens`` tokens (<s>, </s> too)."""
    for k in range(1, 60):
        s = "Well " + " ".join(["go"] * k)
        if len(text.tokenize(s)) == tokens:
            return s
    raise AssertionError(f"no sentence of {tokens} tokens")


def _write_manifest(path: Path, rows: list[dict], header=REQUIRED_COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


def _row(uid, audio, text="Excuse me.", label="neu", speaker="Ses01F", session=1, gender="F"):
    return dict(id=uid, audio=audio, text=text, label=label, speaker=speaker, session=session, gender=gender)


def _noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (int(round(seconds * rate)),) + ((channels,) if channels > 1 else ())
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, encoders):
    """Good utterances: mono, stereo (and its mono mix), 8 kHz, 44.1 kHz, the 460/20 borders."""
    audio, text = encoders
    d = tmp_path_factory.mktemp("corpus")
    (d / "wav").mkdir()
    stereo = _noise(2.0, 16000, 2, seed=1)
    files = {
        "a_mono": (_noise(1.5, 16000, seed=2), 16000, "FLOAT"),
        "b_stereo": (stereo, 16000, "FLOAT"),
        "b_mix": (stereo.astype(np.float64).mean(axis=1).astype(np.float32), 16000, "FLOAT"),
        "c_8k": (_noise(1.3, 8000, seed=3), 8000, "PCM_16"),
        "d_44k": (_noise(2.2, 44100, 2, seed=4), 44100, "PCM_16"),
    }
    for name, frames in (("e_459", 459), ("f_460", 460), ("g_461", 461)):
        files[name] = (_noise(_samples_for(audio, frames) / 16000, 16000, seed=frames), 16000, "FLOAT")
    for name, (x, rate, subtype) in files.items():
        sf.write(d / "wav" / f"{name}.wav", x, rate, subtype=subtype)
    texts = {"e_459": _text_of(text, 19), "f_460": _text_of(text, 20), "g_461": _text_of(text, 21)}
    labels = ["ang", "neu", "hap", "sad"]
    rows = [
        _row(
            name,
            f"wav/{name}.wav",
            texts.get(name, f"Sentence number {i}."),
            labels[i % 4],
            f"Ses0{1 + i % 2}{'FM'[i % 2]}",
            1 + i % 2,
            "FM"[i % 2],
        )
        for i, name in enumerate(files)
    ]
    return _write_manifest(d / "manifest.csv", rows)


def _contents(cache_dir: Path) -> dict[str, dict]:
    """id -> everything the cache holds about it (features at their valid lengths)."""
    cache = open_cache(cache_dir, mode="memory")
    out = {}
    b = cache.batch(np.arange(len(cache)))
    for i, uid in enumerate(cache.ids):
        la, lt = int(b.audio_lengths[i]), int(b.text_lengths[i])
        out[uid] = dict(
            audio=b.audio[i, :la].clone(),
            text=b.text[i, :lt].clone(),
            audio_pad=b.audio[i, la:].clone(),
            text_pad=b.text[i, lt:].clone(),
            label=cache.classes[int(b.labels[i])],
            speaker=str(cache.speakers[i]),
            session=str(cache.sessions[i]),
            gender=str(cache.genders[i]),
            audio_full=int(cache.audio_lengths_full[i]),
            text_full=int(cache.text_lengths_full[i]),
        )
    return out


def _assert_same(a: dict, b: dict, atol: float = ATOL) -> None:
    assert sorted(a) == sorted(b)
    for uid in a:
        for key in ("label", "speaker", "session", "audio_full", "text_full"):
            assert a[uid][key] == b[uid][key], (uid, key)
        for key in ("audio", "text"):
            assert a[uid][key].shape == b[uid][key].shape, (uid, key)
            torch.testing.assert_close(
                a[uid][key], b[uid][key], atol=atol, rtol=0, msg=lambda m, uid=uid, key=key: f"{uid} {key}: {m}"
            )


def _extract(manifest, out, encoders, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("dtype", "float32")
    return extract_corpus(manifest, out, *encoders, **kw)


@pytest.fixture(scope="module")
def batched(corpus, encoders, tmp_path_factory):
    out = tmp_path_factory.mktemp("batched") / "cache"
    summary = _extract(corpus, out, encoders, shard_size=4)
    return out, summary


# --- a corpus in, a cache out --------------------------------------------------------------


def test_cache_holds_every_utterance_right(batched, corpus, encoders):
    out, summary = batched
    audio, text = encoders
    assert (summary.total, summary.extracted, summary.failed_total, summary.skipped) == (8, 8, 0, 0)
    assert verify_cache(out).ok
    cache = open_cache(out)
    assert cache.meta.audio_dim == audio.dim and cache.meta.text_dim == text.dim
    assert cache.meta.classes == PAPER_CLASSES  # the 4-class set gets the official indexes
    assert (cache.meta.max_audio_len, cache.meta.max_text_len) == (460, 20)
    assert cache.meta.audio_encoder == audio.cache_record()
    assert cache.meta.corpus == corpus.parent.name
    got = _contents(out)
    rows = {r["id"]: r for r in csv.DictReader(open(corpus, encoding="utf-8"))}
    for uid, r in rows.items():
        g = got[uid]
        assert (g["label"], g["speaker"], g["session"], g["gender"]) == (
            r["label"],
            r["speaker"],
            r["session"],
            r["gender"],
        )
        wav = read_audio(corpus.parent / r["audio"])
        a_ref, t_ref = audio.encode([wav])[0], text.encode([r["text"]])[0]
        assert g["audio_full"] == len(a_ref) == audio.num_frames(len(wav))
        assert g["text_full"] == len(t_ref)
        torch.testing.assert_close(g["audio"], a_ref[:460], atol=ATOL, rtol=0)
        torch.testing.assert_close(g["text"], t_ref[:20], atol=ATOL, rtol=0)
        assert not g["audio_pad"].any() and not g["text_pad"].any()  # zero padding
    # The 460-frame and 20-token borders: cut above, kept at, padded below.
    assert [(got[u]["audio_full"], len(got[u]["audio"])) for u in ("e_459", "f_460", "g_461")] == [
        (459, 459),
        (460, 460),
        (461, 460),
    ]
    assert [(got[u]["text_full"], len(got[u]["text"])) for u in ("e_459", "f_460", "g_461")] == [
        (19, 19),
        (20, 20),
        (21, 20),
    ]
    # Stereo is mixed to mono; other rates are resampled (16 kHz frame counts).
    torch.testing.assert_close(got["b_stereo"]["audio"], got["b_mix"]["audio"], atol=ATOL, rtol=0)
    assert got["c_8k"]["audio_full"] == audio.num_frames(round(1.3 * 16000))
    assert got["d_44k"]["audio_full"] == audio.num_frames(round(2.2 * 16000))


def test_batched_equals_one_at_a_time(batched, corpus, encoders, tmp_path):
    single = tmp_path / "single"
    calls = []
    audio, text = encoders

    class Counting(type(audio)):  # same encoder, records the batch sizes it is given
        def encode(self, wavs):
            calls.append(len(wavs))
            return super().encode(wavs)

    counting = object.__new__(Counting)
    counting.__dict__.update(audio.__dict__)
    summary = _extract(corpus, single, (counting, text), batch_seconds=1e-3, prefetch=0)
    assert summary.extracted == 8 and set(calls) == {1}
    calls.clear()
    _extract(corpus, tmp_path / "batched", (counting, text), batch_seconds=60)
    assert max(calls) > 1  # the other run really batched
    _assert_same(_contents(batched[0]), _contents(single))


def test_plan_batches_and_rank_shares():
    seconds = [1.0, 5.0, 2.0, 30.0, 2.5, 0.0]
    batches = plan_batches(range(6), seconds, batch_seconds=6.0)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [3]  # longer than a batch: alone, and first
    for b in batches:
        assert max(seconds[i] for i in b) * len(b) <= 6.0 or len(b) == 1
    ids = [f"u{i}" for i in range(7)]
    secs = [float(i) for i in range(7)]
    shares = [rank_share(ids, secs, Ranks(r, 3)) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(7))  # each exactly once
    assert shares == [rank_share(ids, secs, Ranks(r, 3)) for r in range(3)]  # deterministic


def test_default_classes():
    assert default_classes(["sad", "hap", "ang", "neu", "hap"]) == ("ang", "neu", "hap", "sad")
    assert default_classes(["b", "a", "c"]) == ("a", "b", "c")


# --- bad items ----------------------------------------------------------------------------


def test_bad_items_are_reported_and_the_run_completes(tmp_path, encoders):
    d = tmp_path / "bad"
    (d / "wav").mkdir(parents=True)
    sf.write(d / "wav/ok.wav", _noise(1.0, 16000), 16000)
    (d / "wav/junk.wav").write_bytes(b"RIFF\x00\x01junk that is no audio" * 10)
    (d / "wav/empty.wav").write_bytes(b"")
    sf.write(d / "wav/zero.wav", np.zeros(0, np.float32), 16000)
    nan = _noise(1.0, 16000)
    nan[100] = np.nan
    sf.write(d / "wav/nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(d / "wav/short.wav", _noise(0.01, 16000), 16000)
    rows = [
        _row("ok", "wav/ok.wav"),
        _row("junk", "wav/junk.wav"),
        _row("empty", "wav/empty.wav"),
        _row("zero", "wav/zero.wav"),
        _row("nan", "wav/nan.wav"),
        _row("short", "wav/short.wav"),
        _row("missing", "../../outside/missing.wav"),
        _row("notext", "wav/ok.wav", text=""),
        _row("fru", "wav/ok.wav", label="fru"),
        _row("ok", "wav/ok.wav"),  # duplicate id
    ]
    manifest = _write_manifest(d / "manifest.csv", rows)
    with open(manifest, "ab") as f:
        f.write(b"badutf8,wav/ok.wav,caf\xe9 au lait,neu,Ses01F,1,F\n")  # Latin-1, not UTF-8
        f.write(b"fewfields,wav/ok.wav,Hello\n")
    before = sorted(p for p in tmp_path.rglob("*"))
    out = d / "cache"
    summary = _extract(manifest, out, encoders, classes=["ang", "hap", "neu", "sad"])
    assert summary.total == 12  # every data line of the file
    assert summary.accounted == summary.total
    assert (summary.extracted, summary.skipped) == (1, 1)
    assert summary.failed == {"manifest": 4, "audio": 6}
    lines = read_errors(out / "errors-w0.tsv")
    assert len(lines) == summary.skipped + summary.failed_total
    by_id = {uid: (stage, reason) for uid, stage, reason in lines}
    expect = {
        "junk": ("audio", "unreadable"),
        "empty": ("audio", "unreadable"),
        "zero": ("audio", "no samples"),
        "nan": ("audio", "NaN"),
        "short": ("audio", "too short"),
        "missing": ("audio", "not found"),
        "notext": ("manifest", "empty transcript"),
        "fru": ("label", "'fru'"),
        "ok": ("manifest", "duplicate id"),
        "badutf8": ("manifest", "not valid UTF-8"),
        "fewfields": ("manifest", "fields"),
    }
    for uid, (stage, words) in expect.items():
        assert by_id[uid][0] == stage and words in by_id[uid][1], (uid, by_id[uid])
    # A rerun retries the failures (they are not stored), rewrites the file, stores nothing twice.
    again = _extract(manifest, out, encoders, classes=["ang", "hap", "neu", "sad"])
    assert (again.stored_before, again.extracted, again.failed) == (1, 0, summary.failed)
    assert len(read_errors(out / "errors-w0.tsv")) == len(lines)
    # ksr wrote only inside the cache directory.
    after = sorted(p for p in tmp_path.rglob("*"))
    assert {p for p in after if p not in before} <= {out, *out.iterdir()}


def test_whole_run_errors_are_one_line(tmp_path, corpus, encoders):
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "extract",
            str(corpus),
            "--out",
            str(tmp_path / "c"),
            "--audio-encoder",
            "no-such-encoder",
            "--text-encoder",
            "tiny-text",
        ],
    )
    assert r.exit_code == 1 and "unknown encoder spec 'no-such-encoder'" in r.output
    assert len(r.output.strip().splitlines()) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExtractError, match="is a file"):
        _extract(corpus, tmp_path / "file", encoders)
    # Another encoder into an existing cache: refused, saying what differs.
    first = tmp_path / "c2"
    _extract(corpus, first, encoders, classes=["ang", "neu", "hap", "sad"], batch_seconds=60)
    with pytest.raises(Exception, match="classes"):
        _extract(corpus, first, encoders, classes=["sad", "neu", "hap", "ang"])


# --- resuming -----------------------------------------------------------------------------


def test_rerun_skips_what_is_stored(batched, corpus, encoders):
    out, _ = batched
    again = _extract(corpus, out, encoders, shard_size=4)
    assert (again.total, again.stored_before, again.extracted) == (8, 8, 0)


def test_interrupted_run_continues_without_loss_or_duplicates(batched, corpus, encoders, tmp_path):
    out = tmp_path / "cache"

    def stop(done):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _extract(corpus, out, encoders, shard_size=2, batch_seconds=1e-3, on_batch=stop)
    first = len(open_cache(out))
    assert 0 < first < 8  # what was handed to the writer before the interrupt is kept
    rest = _extract(corpus, out, encoders, shard_size=2, batch_seconds=1e-3)
    assert (rest.stored_before, rest.extracted) == (first, 8 - first)
    assert verify_cache(out).ok
    _assert_same(_contents(out), _contents(batched[0]))


_KILLER = """
import os, signal, sys
import ksr.cache.writer as writer
from ksr.extract.pipeline import extract_corpus
from ksr.common import Ranks
point, manifest, out = sys.argv[1:4]
calls = {"n": 0}
def kill():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "renamed":  # a shard renamed into place, its index not yet updated
    real = writer.write_index
    def write_index(root, index):
        if index.shards:
            kill()
        real(root, index)
    writer.write_index = write_index
def on_batch(done):
    if point == "between" and done >= 5:
        kill()
# "renamed" runs as rank 1 of a 2-rank run that a single process then continues: that
# process must also clean up what the other run's killed writer left.
ranks = Ranks(1, 2) if point == "renamed" else Ranks()
extract_corpus(manifest, out, "tiny-audio", "tiny-text", shard_size=2, batch_seconds=1e-3,
               dtype="float32", device="cpu", progress=False, on_batch=on_batch, ranks=ranks)
"""


@pytest.mark.parametrize("point", ["between", "renamed"])
def test_sigkill_then_rerun_equals_uninterrupted(point, batched, corpus, encoders, tiny_dir, tmp_path):
    out = tmp_path / "cache"
    env = {**os.environ, "KSR_CACHE_DIR": str(tiny_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _KILLER, point, str(corpus), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    if point == "renamed":
        assert not verify_cache(out).ok  # a shard no index lists
    rest = _extract(corpus, out, encoders, shard_size=2, batch_seconds=1e-3)
    assert rest.stored_before + rest.extracted == 8
    report = verify_cache(out)
    assert report.ok and not report.notes, report.problems + report.notes
    _assert_same(_contents(out), _contents(batched[0]))


# --- ranks --------------------------------------------------------------------------------


def test_two_ranks_under_torchrun(batched, corpus, encoders, tiny_dir, tmp_path):
    out = tmp_path / "cache"
    cmd = [
        str(BIN / "torchrun"),
        "--nproc-per-node",
        "2",
        "--no-python",
        str(BIN / "ksr"),
        "extract",
        str(corpus),
        "--out",
        str(out),
        "--audio-encoder",
        "tiny-audio",
        "--text-encoder",
        "tiny-text",
        "--dtype",
        "float32",
        "--shard-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "KSR_CACHE_DIR": str(tiny_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 manifest rows: 0 stored before, 8 extracted now" in done.stdout
    assert "(2 ranks)" in done.stdout
    tags = {p.name.split("-")[1] for p in out.glob("shard-*.h5")}
    assert tags == {"rank0", "rank1"}
    assert {p.name for p in out.glob("index-*.json")} == {"index-rank0.json", "index-rank1.json"}
    assert verify_cache(out).ok
    _assert_same(_contents(out), _contents(batched[0]))
    # A single process continues a multi-rank cache: everything is stored already.
    again = _extract(corpus, out, encoders, shard_size=2)
    assert (again.stored_before, again.extracted) == (8, 0)
    assert {p.name for p in out.glob("errors-*.tsv")} == {"errors-w0.tsv"}


def test_two_nodes_under_torchrun(batched, corpus, tiny_dir, tmp_path):
    """``torchrun --nnodes 2`` (one process per node, c10d rendezvous on localhost, gloo): each
    node's rank writes its own share under its own tag; the cache equals a one-process one."""
    out = tmp_path / "cache"
    args = ["extract", corpus, "--out", out, "--audio-encoder", "tiny-audio", "--text-encoder", "tiny-text"]
    args += ["--dtype", "float32", "--shard-size", "2", "--device", "cpu", "--no-progress"]
    outs = run_two_nodes(args, tmp_path, env={"KSR_CACHE_DIR": str(tiny_dir)}, timeout=300)
    assert any("8 manifest rows: 0 stored before, 8 extracted now" in o and "(2 ranks)" in o for o in outs)
    assert {p.name for p in out.glob("index-*.json")} == {"index-rank0.json", "index-rank1.json"}
    assert verify_cache(out).ok
    _assert_same(_contents(out), _contents(batched[0]))


def test_error_fields_are_one_printable_line():
    from ksr.extract.summary import one_line

    assert one_line("bad\tid\n  here") == "bad id here"
    assert one_line("a\x00b\x1bc\x7f") == "a\\x00b\\x1bc\\x7f"  # no raw control bytes in the TSV
    assert one_line("x" * 500, limit=10) == "xxxxxxx..."


def test_attributes_are_stored_and_unusable_values_reported(corpus, encoders, tmp_path):
    """The manifest's activation/valence/dominance reach the cache (NaN where empty or unusable);
    each unusable value is one line of the summary, each empty one is counted."""
    header = [*REQUIRED_COLUMNS, "activation", "valence", "dominance"]
    wav = corpus.parent / "wav"
    rows = [
        {**_row("u1", str(wav / "a_mono.wav")), "activation": "2.5", "valence": "4", "dominance": "1"},
        {**_row("u2", str(wav / "b_mix.wav")), "activation": "", "valence": "high", "dominance": "3"},
        {**_row("u3", str(wav / "c_8k.wav")), "activation": "5.5", "valence": "1", "dominance": ""},
    ]
    manifest = _write_manifest(tmp_path / "iemocap.csv", rows, header=header)
    summary = _extract(manifest, tmp_path / "cache", encoders)
    assert summary.attributes == ("activation", "valence", "dominance") and summary.attribute_range == (1.0, 5.0)
    assert summary.attribute_missing == {"activation": 1, "valence": 0, "dominance": 1}
    assert summary.attribute_problems == [
        "u2: valence 'high' is not a number (stored as missing)",
        "u3: activation 5.5 is outside the corpus's scale 1-5 (stored as missing)",
    ]
    assert "  u3: activation 5.5 is outside the corpus's scale 1-5 (stored as missing)" in summary.format()
    with open_cache(tmp_path / "cache", progress=False) as cache:
        got = dict(zip(cache.ids, cache.attributes.tolist(), strict=True))
    assert got["u1"] == [2.5, 4.0, 1.0]
    assert np.isnan(got["u2"][:2]).all() and got["u2"][2] == 3.0
    assert np.isnan(got["u3"][0]) and got["u3"][1] == 1.0 and np.isnan(got["u3"][2])


def test_attributes_can_be_left_out_and_a_cache_keeps_its_choice(corpus, encoders, tmp_path):
    """attributes=() (ksr extract --attributes none) stores none; a later run that would store them
    in the same cache is refused in one line naming the difference."""
    header = [*REQUIRED_COLUMNS, "valence"]
    rows = [{**_row("u1", str(corpus.parent / "wav" / "a_mono.wav")), "valence": "2"}]
    manifest = _write_manifest(tmp_path / "iemocap.csv", rows, header=header)
    summary = _extract(manifest, tmp_path / "cache", encoders, attributes=())
    assert summary.attributes == () and summary.attribute_lines() == []
    with open_cache(tmp_path / "cache", progress=False) as cache:
        assert cache.attribute_names == () and cache.attributes.shape == (1, 0)
    with pytest.raises(Exception, match=r"attributes: cache has \[\], expected \['valence'\]"):
        _extract(manifest, tmp_path / "cache", encoders)
    with pytest.raises(ExtractError, match=r"iemocap\.csv: no column\(s\) dominance for the attributes"):
        _extract(manifest, tmp_path / "other", encoders, attributes=["dominance"])
