"""Schema version 3: numeric attributes (activation, valence, dominance) stored per utterance.

Round trip (values and NaN for missing ones), older caches (no attributes), the writer's refusals,
and extraction's per-utterance report of values that are not numbers or off the corpus's scale.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from ksr.cache import CacheError, CacheWriter, open_cache
from ksr.cache.synthetic import synthetic_utterances
from ksr.extract.corpora.attributes import attribute_columns, declared_range, parse_attributes
from ksr.extract.summary import ExtractSummary
from tests.support.tiny import tiny_meta

V1 = Path(__file__).resolve().parents[1] / "data" / "cache-v1"
NAMES = ("activation", "valence", "dominance")


def _write(root: Path, values: list, meta=None) -> list[dict]:
    meta = meta or tiny_meta(attributes=NAMES)
    utts = list(
        synthetic_utterances(len(values), meta, seed=3, audio_lengths=[5] * len(values), text_lengths=[3] * len(values))
    )
    with CacheWriter(root, meta, shard_size=2) as w:
        for u, v in zip(utts, values, strict=True):
            u["attributes"] = v
            w.add(**u)
    return utts


def test_attributes_round_trip_with_nan_for_missing(tmp_path):
    values = [[1.0, 2.5, 5.0], [np.nan, 3.0, np.nan], None, [4.25, 1.0, 2.0], [3.0, 3.0, 3.0]]
    utts = _write(tmp_path / "c", values)
    with open_cache(tmp_path / "c", mode="memory", progress=False) as cache:
        assert cache.attribute_names == NAMES and cache.meta.attribute_range == (1.0, 5.0)
        want = np.array([[np.nan] * 3 if v is None else v for v in values], dtype=np.float32)
        order = [cache.ids.index(u["id"]) for u in utts]
        np.testing.assert_array_equal(cache.attributes[order], want)  # NaN == NaN here
        batch = cache.batch(np.array(order[::-1]))
        np.testing.assert_array_equal(batch.attributes.numpy(), want[::-1])
    with h5py.File(tmp_path / "c" / "shard-w0-00000.h5", "r") as f:
        assert f.attrs["schema_version"] == 3 and f["attributes"].shape == (2, 3)


def test_stream_mode_gives_the_same_attributes(tmp_path):
    _write(tmp_path / "c", [[1.0, 2.0, 3.0], [np.nan, 4.0, 5.0], [2.0, 2.0, 2.0]])
    with (
        open_cache(tmp_path / "c", mode="memory", progress=False) as a,
        open_cache(tmp_path / "c", mode="stream", progress=False) as b,
    ):
        np.testing.assert_array_equal(a.batch([2, 0]).attributes.numpy(), b.batch([2, 0]).attributes.numpy())


def test_an_old_cache_opens_without_attributes(tmp_path):
    shutil.copytree(V1, tmp_path / "c")
    with open_cache(tmp_path / "c", mode="memory", progress=False) as cache:
        assert cache.attribute_names == () and cache.attributes.shape == (40, 0)
        assert tuple(cache.batch([0, 1, 2]).attributes.shape) == (3, 0)


def test_writer_refuses_a_wrong_count_or_an_infinite_value(tmp_path):
    meta = tiny_meta(attributes=NAMES)
    u = next(synthetic_utterances(1, meta, seed=1, audio_lengths=[4], text_lengths=[2]))
    with CacheWriter(tmp_path / "c", meta) as w:
        with pytest.raises(ValueError, match=r"utterance 'utt000000': 2 attribute value\(s\), the cache stores 3"):
            w.add(**{**u, "attributes": [1.0, 2.0]})
        with pytest.raises(ValueError, match=r"utterance 'utt000000': an infinite attribute value"):
            w.add(**{**u, "attributes": [1.0, np.inf, 2.0]})


def test_a_shard_with_a_damaged_attributes_dataset_is_refused(tmp_path):
    _write(tmp_path / "c", [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    with h5py.File(tmp_path / "c" / "shard-w0-00000.h5", "r+") as f:
        del f["attributes"]
    with pytest.raises(CacheError, match=r"shard-w0-00000\.h5: dataset 'attributes' missing or not of shape \(2, 3\)"):
        open_cache(tmp_path / "c", progress=False, verify=False)


def test_attribute_columns_and_declared_scales():
    assert attribute_columns(["raw_label", "dominance", "valence", "activation"]) == NAMES
    assert attribute_columns(["raw_label", "valence"]) == ("valence",)
    assert declared_range("iemocap") == (1.0, 5.0)
    assert declared_range("MSP-Podcast 8-class") == declared_range("msp_podcast") == (1.0, 7.0)
    assert declared_range("lssed") is None


def test_parse_attributes_reports_each_unusable_value_never_a_zero():
    values, missing, problem = parse_attributes(
        "u1", {"activation": "abc", "valence": "", "dominance": "9"}, NAMES, (1.0, 5.0)
    )
    assert np.isnan(values).all() and missing == ["valence"]
    assert problem == (
        "u1: activation 'abc' is not a number; dominance 9 is outside the corpus's scale 1-5 (stored as missing)"
    )
    values, missing, problem = parse_attributes(
        "u2", {"activation": " 2.5", "valence": "nan", "dominance": "1"}, NAMES, None
    )
    assert values[0] == 2.5 and np.isnan(values[1]) and values[2] == 1.0
    assert missing == [] and problem == "u2: valence 'nan' is not a number (stored as missing)"


def test_the_summary_counts_missing_values_and_lists_bad_ones():
    s = ExtractSummary(
        cache_dir=Path("c"),
        total=3,
        extracted=3,
        attributes=NAMES,
        attribute_range=(1.0, 7.0),
        attribute_missing={"activation": 0, "valence": 2, "dominance": 1},
        attribute_problems=["u1: valence 'x' is not a number (stored as missing)"],
    )
    text = s.format()
    assert (
        "attributes activation, valence, dominance (scale 1-7): missing (left empty) in the utterances extracted "
        "now: activation 0, valence 2, dominance 1; 1 utterance(s) with unusable values, stored as missing:"
    ) in text
    assert "\n  u1: valence 'x' is not a number (stored as missing)" in text
    merged = ExtractSummary.merge([s, s])
    assert merged.attribute_missing == {"activation": 0, "valence": 4, "dominance": 2}
    assert len(merged.attribute_problems) == 2


def test_cache_info_counts_values_and_missing_ones(tmp_path):
    from ksr.cache.info import cache_info, format_info

    _write(tmp_path / "c", [[1.0, 2.0, np.nan], [np.nan, 4.0, np.nan], [2.0, 2.0, 2.0]])
    info = cache_info(tmp_path / "c")
    assert info["attributes"] == {
        "activation": {"values": 2, "missing": 1},
        "valence": {"values": 3, "missing": 0},
        "dominance": {"values": 1, "missing": 2},
    }
    assert "attributes (scale 1-5): activation 2 (1 missing), valence 3 (0 missing), dominance 1 (2 missing)" in (
        format_info(info)
    )
