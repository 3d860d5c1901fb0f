"""A table of bad invocations: each ends with one line and a non-zero status, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from support.tiny import tiny_meta

from ksr.cache.synthetic import write_synthetic_cache
from ksr.cli import main


@pytest.fixture(scope="module")
def where(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    meta = tiny_meta()
    write_synthetic_cache(root / "cache", 40, meta, seed=1, signal=1.0)
    (root / "m.csv").write_text("id,audio,text,label,speaker,session,gender\n")
    return root


BAD = [
    ("train --cache CACHE --run RUN --device bogus", 1, "--device bogus: not a device"),
    ("train --cache CACHE --run RUN --device gpu", 1, "--device gpu: not a device"),
    ("train --cache CACHE --run RUN --device meta", 1, "ksr runs on cpu or cuda"),
    ("train --cache CACHE --run RUN --heads -1", 2, "num_heads must be >= 1"),
    ("train --cache CACHE --run RUN --heads 0", 2, "num_heads must be >= 1"),
    ("train --cache CACHE --run RUN --seeds ,", 2, "expected comma-separated integer seeds"),
    ("train --cache CACHE --run RUN --lr inf", 2, "'--lr'"),
    ("train --cache CACHE --run RUN --val-fraction -1", 2, "'--val-fraction'"),
    ("train --cache CACHE --run RUN --fold 0", 2, "'--fold'"),
    ("train --cache CACHE --run RUN --heads 2 --fold 9", 1, "fold 9 does not exist"),
    ("train --cache CACHE --run RUN --heads 2 --warmup-epochs 500", 1, "warmup_epochs must be in"),
    ("ablate keep-rate --cache CACHE --heads 2 --values 0.5,abc --root RUN", 1, "keep rate value 'abc'"),
    ("eval --run RUN/nothere", 1, "no run.json here"),
    ("eval --run RUN/nothere --bootstrap-seed -5", 2, "'--bootstrap-seed'"),
    ("eval --run RUN/nothere --device cuda:9", 1, ""),
    ("extract M --out RUN/o --shard-size 0", 2, "'--shard-size'"),
    ("extract M --out RUN/o --device bogus --audio-encoder tiny-audio --text-encoder tiny-text", 1, ""),
    ("extract M --out RUN/o --audio-encoder nonsense --text-encoder tiny-text", 1, ""),
    ("extract RUN/missing.csv --out RUN/o", 1, "manifest not found"),
    ("cache info RUN/nothere", 1, ""),
    ("predict --checkpoint RUN/nothere.pt --audio RUN/x.wav --text hi", 1, "no such file"),
    ("predict --checkpoint RUN/nothere.pt --audio RUN/x.wav --text hi --device bogus", 1, ""),
    ("convert-official RUN/nothere.pt RUN/out.pt", 1, ""),
    ("prepare check RUN/missing.csv", 1, "manifest not found"),
]


@pytest.mark.parametrize("line, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_invocation_is_one_line(where, line, status, words):
    args = [
        a.replace("CACHE", str(where / "cache")).replace("RUN", str(where / "run")).replace("M", str(where / "m.csv"))
        if a in ("CACHE", "M") or a.startswith("RUN")
        else a
        for a in line.split()
    ]
    result = CliRunner().invoke(main, args, env={"KSR_CACHE_DIR": str(where / "k")})
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escaped exception
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error:"), result.output
    assert words in " ".join(result.output.split())
