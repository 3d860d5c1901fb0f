"""`ksr cache info` and `ksr cache verify`: what a user sees."""

import json
import os
from collections import Counter

from click.testing import CliRunner

from ksr.cache.synthetic import synthetic_meta, synthetic_utterances, write_synthetic_cache
from ksr.cli import main

DA, DT = 8, 6


def _cache(tmp_path, n=10):
    root = tmp_path / "c"
    lengths = dict(audio_lengths=[470] + [100] * (n - 1), text_lengths=[25, 21] + [20] * (n - 2))
    meta = write_synthetic_cache(root, n, synthetic_meta(DA, DT), seed=13, shard_size=4, **lengths)
    return root, meta, list(synthetic_utterances(n, meta, seed=13, **lengths))


def test_info(tmp_path):
    root, meta, utts = _cache(tmp_path)
    result = CliRunner().invoke(main, ["cache", "info", str(root)])
    assert result.exit_code == 0, result.output
    out = result.output
    classes = Counter(u["label"] for u in utts)
    assert "classes: " + ", ".join(f"{c} {classes[c]}" for c in meta.classes) in out
    sessions = Counter(u["session"] for u in utts)
    assert "sessions: " + ", ".join(f"{s} {sessions[s]}" for s in sorted(sessions)) in out
    assert "utterances: 10 in 3 shards" in out
    assert f"audio: 460 x {DA} float16  <- synthetic-audio, layer 0, 100 frames/s" in out
    assert "cut to the max length: 1 audio, 2 text" in out

    info = json.loads(CliRunner().invoke(main, ["cache", "info", "--json", str(root)]).output)
    assert info["ideal_size"] == 10 * (460 * DA + 20 * DT) * 2
    files = [f for f in os.listdir(root) if not f.startswith(".")]
    assert info["size_on_disk"] == sum((root / f).stat().st_size for f in files)
    assert info["speakers"] == dict(sorted(Counter(u["speaker"] for u in utts).items()))


def test_verify_ok_and_damaged(tmp_path):
    root, _, _ = _cache(tmp_path)
    ok = CliRunner().invoke(main, ["cache", "verify", str(root)])
    assert ok.exit_code == 0 and ok.output.startswith(f"ok: {root}: 10 utterances in 3 shards")
    os.truncate(root / "shard-w0-00001.h5", 10)
    (root / "shard-w0-00002.h5").unlink()
    bad = CliRunner().invoke(main, ["cache", "verify", str(root)])
    assert bad.exit_code == 1
    lines = bad.output.splitlines()
    assert lines == [
        f"error: {root / 'shard-w0-00002.h5'}: missing shard (listed in index-w0.json with 2 utterances)",
        f"error: {root / 'shard-w0-00001.h5'}: truncated: 10 bytes on disk, the index recorded "
        + lines[1].split("the index recorded ")[1],
    ]
    info = CliRunner().invoke(main, ["cache", "info", str(root)])
    assert info.exit_code == 1 and "Error: " in info.output and "missing shard" in info.output


def test_info_summarises_many_speakers():
    from ksr.cache.info import _line

    assert _line({"a": 1, "b": 2}) == "a 1, b 2"
    counts = {f"spk{i:03d}": i + 1 for i in range(30)}
    assert _line(counts) == "30 distinct; utterances each: min 1, median 16, max 30"
