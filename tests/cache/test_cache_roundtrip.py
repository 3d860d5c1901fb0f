"""ksr.cache: what goes in comes out (features, lengths, masks, metadata), in both dtypes."""

import numpy as np
import pytest
import torch

from ksr.cache import CacheWriter, open_cache
from ksr.cache.synthetic import synthetic_meta, synthetic_utterances

DA, DT = 8, 6  # small feature dims; the max lengths stay at the real 460 / 20


def _write(root, meta, utts, shard_size=3):
    with CacheWriter(root, meta, shard_size=shard_size) as w:
        for u in utts:
            w.add(**u)


def _expected_rows(x: np.ndarray, top: int, dtype: str) -> np.ndarray:
    """Independent padding: the first ``top`` rows rounded to the storage dtype, zeros after."""
    out = np.zeros((top, x.shape[1]), np.float32)
    n = min(len(x), top)
    out[:n] = x[:n].astype(dtype).astype(np.float32)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_round_trip_values_lengths_masks(tmp_path, dtype, mode):
    meta = synthetic_meta(DA, DT, dtype=dtype)
    # shorter, equal and longer than the max lengths, and a single row
    alens = [1, 459, 460, 461, 1000, 37, 460]
    tlens = [1, 19, 20, 21, 45, 20, 7]
    utts = list(synthetic_utterances(len(alens), meta, seed=3, audio_lengths=alens, text_lengths=tlens))
    _write(tmp_path, meta, utts)
    with open_cache(tmp_path, mode=mode, progress=False) as cache:
        batch = cache.batch(np.arange(len(utts)))
    assert batch.ids == [u["id"] for u in utts]
    assert batch.audio.dtype == torch.float32 and batch.audio.shape == (7, 460, DA)
    assert batch.text.shape == (7, 20, DT)
    for j, u in enumerate(utts):
        want_a = _expected_rows(u["audio"], 460, dtype)
        want_t = _expected_rows(u["text"], 20, dtype)
        # exact: float32 stores the input, float16 stores its float16 rounding
        np.testing.assert_array_equal(batch.audio[j].numpy(), want_a)
        np.testing.assert_array_equal(batch.text[j].numpy(), want_t)
        if dtype == "float16":  # and that rounding is within float16's half-ulp
            n = min(len(u["audio"]), 460)
            err = np.abs(batch.audio[j, :n].numpy() - u["audio"][:n])
            assert (err <= np.abs(u["audio"][:n]) * 2.0**-11 + 2.0**-25).all()
    assert batch.audio_lengths.tolist() == [1, 459, 460, 460, 460, 37, 460]
    assert batch.text_lengths.tolist() == [1, 19, 20, 20, 20, 20, 7]
    for j, (la, lt) in enumerate(zip(batch.audio_lengths.tolist(), batch.text_lengths.tolist(), strict=True)):
        assert batch.audio_padding_mask[j].tolist() == [t >= la for t in range(460)]
        assert batch.text_padding_mask[j].tolist() == [t >= lt for t in range(20)]
    assert batch.audio_padding_mask.dtype == torch.bool and batch.labels.dtype == torch.long


def test_metadata_round_trip(tmp_path):
    meta = synthetic_meta(DA, DT, classes=("ang", "neu", "hap", "sad"))
    utts = list(
        synthetic_utterances(5, meta, seed=1, audio_lengths=[10, 500, 460, 3, 461], text_lengths=[2, 30, 20, 1, 21])
    )
    utts[2]["transcript"] = "Listen: I told you twice — no. [LAUGHTER] ünïcødé"
    utts[3]["label"] = 2  # an index works as well as a name
    utts[4]["session"] = 5  # ints are stored as text
    _write(tmp_path, meta, utts, shard_size=2)
    cache = open_cache(tmp_path, mode="stream", progress=False)
    assert cache.classes == ("ang", "neu", "hap", "sad")
    assert cache.ids == [u["id"] for u in utts]
    want_labels = [meta.classes.index(u["label"]) if isinstance(u["label"], str) else u["label"] for u in utts]
    assert cache.labels.tolist() == want_labels
    assert cache.transcripts.tolist() == [u["transcript"] for u in utts]
    assert cache.speakers.tolist() == [u["speaker"] for u in utts]
    assert cache.sessions.tolist() == [str(u["session"]) for u in utts]
    assert cache.genders.tolist() == [u["gender"] for u in utts]
    assert cache.audio_lengths_full.tolist() == [10, 500, 460, 3, 461]
    assert cache.text_lengths_full.tolist() == [2, 30, 20, 1, 21]
    assert cache.audio_lengths.tolist() == [10, 460, 460, 3, 460]
    assert cache.meta == meta
    cache.close()


def test_torch_inputs_any_float_dtype(tmp_path):
    meta = synthetic_meta(DA, DT, dtype="float32")
    a = torch.randn(30, DA, dtype=torch.bfloat16)
    t = torch.randn(4, DT, dtype=torch.float64)
    with CacheWriter(tmp_path, meta) as w:
        w.add("x", a, t, "neu")
    b = open_cache(tmp_path, progress=False).batch([0])
    assert torch.equal(b.audio[0, :30], a.float())
    assert torch.equal(b.text[0, :4], t.float())
    assert not b.audio[0, 30:].any() and not b.text[0, 4:].any()


def test_batches_in_half_precision(tmp_path):
    meta = synthetic_meta(DA, DT, dtype="float16")
    utts = list(synthetic_utterances(4, meta, seed=2))
    _write(tmp_path, meta, utts)
    for mode in ("memory", "stream"):
        b = open_cache(tmp_path, mode=mode, progress=False).batch([3, 0], dtype=torch.float16)
        assert b.audio.dtype == torch.float16
        n = min(len(utts[3]["audio"]), 460)
        np.testing.assert_array_equal(b.audio[0, :n].numpy(), utts[3]["audio"][:n].astype(np.float16))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(label="joy"), r"label 'joy' is not one of the cache's classes"),
        (dict(label=7), r"label 7 is neither a class name nor an index in 0\.\.3"),
        (dict(audio=np.zeros((5, DA + 1))), r"audio features of shape \(5, 9\), expected \(length, 8\)"),
        (dict(text=np.zeros((0, DT))), r"empty text features"),
        (dict(audio=np.full((5, DA), np.nan)), r"audio features hold NaN or inf"),
        (
            dict(text=torch.tensor([[1.0] * DT, [float("inf")] * DT], dtype=torch.float16)),
            r"text features hold NaN or inf",
        ),
        (dict(audio=np.full((5, DA), 1e6)), r"audio features overflow float16 \(\|x\| > 65504\)"),
        (dict(id=""), r"id must not be empty"),
    ],
)
def test_writer_refuses_bad_utterances(tmp_path, change, match):
    meta = synthetic_meta(DA, DT)
    utt = {**next(synthetic_utterances(1, meta)), **change}
    with CacheWriter(tmp_path, meta) as w:
        with pytest.raises(ValueError, match=match):
            w.add(**utt)
        w.add(**next(synthetic_utterances(1, meta)))  # the writer stays usable
    assert len(open_cache(tmp_path, progress=False)) == 1


def test_writer_refuses_a_duplicate_id(tmp_path):
    meta = synthetic_meta(DA, DT)
    utts = list(synthetic_utterances(3, meta))
    with CacheWriter(tmp_path, meta, shard_size=2) as w:
        for u in utts:
            w.add(**u)
        with pytest.raises(ValueError, match=r"'utt000000' is already stored"):
            w.add(**utts[0])  # finished in shard 0
        with pytest.raises(ValueError, match=r"'utt000002' is already stored"):
            w.add(**utts[2])  # still buffered
    with CacheWriter(tmp_path, meta, tag="other") as w:
        assert w.stored_ids() == {u["id"] for u in utts}
        with pytest.raises(ValueError, match="already stored"):
            w.add(**utts[1])  # stored by another writer


def test_shards_are_plain_hdf5(tmp_path):
    """Any HDF5 tool reads the same features and metadata as the cache reader."""
    import h5py

    meta = synthetic_meta(DA, DT)
    utts = list(synthetic_utterances(5, meta, seed=6))
    _write(tmp_path, meta, utts, shard_size=5)
    batch = open_cache(tmp_path, mode="stream", progress=False).batch(range(5))
    with h5py.File(tmp_path / "shard-w0-00000.h5", "r") as f:
        np.testing.assert_array_equal(f["audio"][()].astype(np.float32), batch.audio.numpy())
        np.testing.assert_array_equal(f["text"][()].astype(np.float32), batch.text.numpy())
        assert f["id"].asstr()[()].tolist() == batch.ids
        assert f["audio_len"][()].tolist() == batch.audio_lengths.tolist()
        assert f.attrs["schema_version"] == 3 and f.attrs["n"] == 5 and f.attrs["writer"] == "w0"
        assert f["audio"].dtype == np.float16 and f["audio"].chunks is None


def test_add_batch_equals_adding_one_by_one(tmp_path):
    meta = synthetic_meta(DA, DT)
    utts = list(synthetic_utterances(4, meta, seed=9, audio_lengths=[5, 470, 30, 1], text_lengths=[3, 25, 20, 2]))
    _write(tmp_path / "one", meta, utts)
    audio = torch.zeros(4, 470, DA, dtype=torch.float16)  # as an encoder in half precision gives it
    text = torch.zeros(4, 25, DT, dtype=torch.float16)
    for i, u in enumerate(utts):
        audio[i, : len(u["audio"])] = torch.from_numpy(u["audio"])
        text[i, : len(u["text"])] = torch.from_numpy(u["text"])
    with CacheWriter(tmp_path / "batch", meta) as w:
        w.add_batch(
            [u["id"] for u in utts],
            audio,
            torch.tensor([5, 470, 30, 1]),
            text,
            [3, 25, 20, 2],
            [u["label"] for u in utts],
            speakers=[u["speaker"] for u in utts],
            sessions=[u["session"] for u in utts],
            genders=[u["gender"] for u in utts],
            transcripts=[u["transcript"] for u in utts],
        )
        with pytest.raises(ValueError, match=r"add_batch: 1 ids, audio \(4, 470, 8\)"):
            w.add_batch(["x"], audio, [1] * 4, text, [1] * 4, ["neu"] * 4)
        with pytest.raises(ValueError, match="a length exceeds the padded batch"):
            w.add_batch(["x"], audio[:1], [471], text[:1], [1], ["neu"])
    one = open_cache(tmp_path / "one", progress=False)
    batch = open_cache(tmp_path / "batch", progress=False)
    a, b = one.batch(range(4)), batch.batch(range(4))
    assert a.ids == b.ids and torch.equal(a.audio, b.audio) and torch.equal(a.text, b.text)
    assert one.audio_lengths_full.tolist() == batch.audio_lengths_full.tolist() == [5, 470, 30, 1]
    for name in ("labels", "speakers", "sessions", "genders", "transcripts"):
        assert getattr(one, name).tolist() == getattr(batch, name).tolist()
