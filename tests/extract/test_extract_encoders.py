"""Encoders: declared dims and frame counts, batched == one at a time, layers, specs, tiny builds.

Tolerance for batched vs one-at-a-time features: float32, ATOL = 2e-5. The two computations are
the same maths; they differ only in the order of floating-point sums (a padded batch has other
matrix shapes, so BLAS blocks the reductions differently; masked keys get exactly zero softmax
weight). Such reordering costs a few ulp per operation: the tiny models' features are O(1)
(ulp ~2.4e-7 at 2.0) and show at most ~1.5e-6 after 2 layers, so 2e-5 is about 10x the observed
error and still 1000x below the error of a wrong mask (checked by a control below, > 1e-2).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ksr.cli import main
from ksr.extract.audio import AudioError
from ksr.extract.encoders import EncoderError, EncoderSpec, load_encoder, parse_spec
from ksr.extract.encoders.hf import HFAudioEncoder, HFTextEncoder, checkpoint_digest
from ksr.extract.encoders.tiny import TINY_TEXT, build_tiny, ensure_tiny, tiny_root

ATOL = 2e-5
LENGTHS = [425, 3333, 9000, 16000]
FRAMES = [1, 19, 54, 98]  # worked out by hand from kernels (10,8,8,4) and strides (5,4,4,2)


def _conv_frames(n: int, kernels=(10, 8, 8, 4), strides=(5, 4, 4, 2)) -> int:
    for k, s in zip(kernels, strides, strict=True):
        n = (n - k) // s + 1
    return n


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def audio(root):
    return load_encoder("tiny-audio", tiny_root=root)


@pytest.fixture(scope="module")
def text(root):
    return load_encoder("tiny-text", tiny_root=root)


@pytest.fixture(scope="module")
def wavs():
    rng = np.random.default_rng(7)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in LENGTHS]


def _assert_batch_equals_single(encoder, items):
    batch = encoder.encode(items)
    for i, item in enumerate(items):
        single = encoder.encode([item])[0]
        assert batch[i].shape == single.shape
        torch.testing.assert_close(batch[i], single, atol=ATOL, rtol=0)
    return batch


# --- tiny audio -------------------------------------------------------------------------------


def test_tiny_audio_declares(audio):
    d = audio.describe()
    assert {
        k: d[k]
        for k in (
            "modality",
            "name",
            "spec",
            "model_type",
            "dim",
            "layer",
            "num_layers",
            "frame_rate",
            "sample_rate",
            "min_samples",
            "dtype",
            "revision",
        )
    } == {
        "modality": "audio",
        "name": "tiny-audio",
        "spec": "tiny-audio@layer=2",
        "model_type": "wav2vec2",
        "dim": 32,
        "layer": 2,
        "num_layers": 2,
        "frame_rate": 100.0,
        "sample_rate": 16000,
        "min_samples": 425,
        "dtype": "float32",
        "revision": None,
    }
    assert len(d["digest"]) == len("sha256:") + 64 and d["digest"].startswith("sha256:")
    json.dumps(d)  # JSON-able, for the cache metadata
    assert audio.batched


def test_tiny_audio_frame_counts(audio, wavs):
    assert [_conv_frames(n) for n in LENGTHS] == FRAMES
    assert [audio.num_frames(n) for n in LENGTHS] == FRAMES
    assert audio.num_frames(424) == 0
    out = audio.encode(wavs)
    assert [tuple(o.shape) for o in out] == [(n, 32) for n in FRAMES]
    assert all(o.dtype == torch.float32 and o.device.type == "cpu" for o in out)


def test_tiny_audio_batch_equals_one_at_a_time(audio, wavs):
    _assert_batch_equals_single(audio, wavs)


def test_control_without_mask_differs(audio, wavs):
    """The tolerance is meaningful: padding the batch without the mask moves features a lot."""
    fe = audio.feature_extractor
    with torch.inference_mode():
        inputs = fe(wavs, sampling_rate=16000, padding=True, return_tensors="pt")
        hidden = audio.model(inputs["input_values"], output_hidden_states=True).hidden_states[2]
    single = audio.encode([wavs[1]])[0]
    assert (hidden[1, : FRAMES[1]] - single).abs().max() > 1e-2


def test_layer_choice_matches_transformers(root, wavs):
    from transformers import AutoModel

    folder = ensure_tiny("tiny-audio", root)
    model = AutoModel.from_pretrained(folder).eval()
    x = torch.from_numpy((wavs[2] - wavs[2].mean()) / np.sqrt(wavs[2].var() + 1e-7))[None]
    with torch.inference_mode():
        states = model(x, output_hidden_states=True).hidden_states
    for layer in (0, 1, -1):
        enc = load_encoder(f"tiny-audio@layer={layer}", tiny_root=root)
        torch.testing.assert_close(enc.encode([wavs[2]])[0], states[layer][0], atol=1e-5, rtol=0)
    assert load_encoder("tiny-audio@layer=-3", tiny_root=root).layer == 0
    assert not torch.allclose(states[0], states[2])


def test_layer_out_of_range(root):
    with pytest.raises(
        EncoderError,
        match=r"layer 3 is out of range for .*: 0\.\.2 "
        r"\(or -3\.\.-1\)",
    ):
        load_encoder("tiny-audio@layer=3", tiny_root=root)


def test_too_short_and_not_mono(audio):
    with pytest.raises(
        AudioError,
        match=r"^item 1: 424 samples is shorter than the 425 that "
        r"tiny-audio needs for one frame$",
    ):
        audio.encode([np.zeros(1000, np.float32), np.zeros(424, np.float32)])
    with pytest.raises(AudioError, match=r"item 0: expected mono samples \(1-D\)"):
        audio.encode([np.zeros((1000, 2), np.float32)])
    assert audio.encode([]) == []


# --- other speech model kinds, through the hf: spec -------------------------------------------


@pytest.mark.parametrize(
    "model_type, norm, batched",
    [
        ("wav2vec2", "group", False),
        ("hubert", "layer", True),
        ("hubert", "group", False),
        ("wavlm", "layer", True),
        ("data2vec-audio", "layer", False),  # stacked positional convs: padding leaks, run singly
    ],
)
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_hf_speech_models(tmp_path, wavs, model_type, norm, batched):
    folder = build_tiny("tiny-audio", tmp_path / model_type, model_type=model_type, norm=norm)
    enc = load_encoder(f"hf:{folder}@layer=1", modality="audio")
    assert isinstance(enc, HFAudioEncoder)
    assert (enc.model_type, enc.dim, enc.layer, enc.frame_rate, enc.batched) == (model_type, 32, 1, 100.0, batched)
    assert enc.spec == f"hf:{folder}@layer=1"
    out = _assert_batch_equals_single(enc, wavs)
    assert [o.shape[0] for o in out] == FRAMES


# --- tiny text --------------------------------------------------------------------------------


def test_tiny_text_declares(text):
    d = text.describe()
    assert {
        k: d[k] for k in ("modality", "name", "spec", "model_type", "dim", "layer", "num_layers", "frame_rate")
    } == {
        "modality": "text",
        "name": "tiny-text",
        "spec": "tiny-text@layer=2",
        "model_type": "roberta",
        "dim": 32,
        "layer": 2,
        "num_layers": 2,
        "frame_rate": None,
    }
    assert text.max_tokens == 128


def test_tiny_text_really_tokenizes(text):
    """Fails on an empty tokenizer (transformers 5 builds one from vocab_file=/merges_file=)."""
    assert text.tokenize("I'm so sad and tired.") == ["<s>", "I", "'m", "Ġso", "Ġsad", "Ġand", "Ġtired", ".", "</s>"]
    tok = text.tokenizer
    ids = tok("Excuse me: [LAUGHTER]")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "Excuse me: [LAUGHTER]"
    assert tok.unk_token_id not in ids
    assert len(tok) == 496


def test_tiny_text_shapes_and_special_tokens(text):
    texts = ["Excuse me.", "Well, that's fine: I'm happy now, really happy.", "Why?"]
    out = text.encode(texts)
    assert [tuple(o.shape) for o in out] == [(len(text.tokenize(t)), 32) for t in texts]
    assert [o.shape[0] for o in out] == [5, 16, 5]
    assert text.tokenize("Why?") == ["<s>", "Wh", "y", "?", "</s>"]


def test_tiny_text_batch_equals_one_at_a_time(text):
    _assert_batch_equals_single(
        text, ["Excuse me.", "I can't believe you did that! Why?", "Oh my god, that's wonderful news, congratulations!"]
    )


def test_empty_tokenizer_is_refused(tmp_path, root):
    from transformers import RobertaModel, RobertaTokenizer

    folder = ensure_tiny("tiny-text", root)
    bad = tmp_path / "bad-text"
    RobertaModel.from_pretrained(folder).save_pretrained(bad)
    (bad / "vocab.json").write_text(json.dumps({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5}))
    (bad / "merges.txt").write_text("#version: 0.2\na b\n")
    RobertaTokenizer(vocab_file=str(bad / "vocab.json"), merges_file=str(bad / "merges.txt")).save_pretrained(bad)
    with pytest.raises(EncoderError, match=r"the tokenizer of .* turns text into no tokens"):
        HFTextEncoder(bad)


def test_bert_kin(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted(set(TINY_TEXT.lower().replace(".", " . ").replace(",", " , ").split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    vocab += list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab))}
    BertTokenizer(vocab=vocab).save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(tmp_path)
    enc = load_encoder(f"hf:{tmp_path}@layer=-2", modality="text")
    assert (enc.model_type, enc.dim, enc.layer, enc.num_layers) == ("bert", 48, 2, 3)
    assert enc.tokenize("I miss her so much.") == ["[CLS]", "i", "miss", "her", "so", "much", ".", "[SEP]"]
    _assert_batch_equals_single(enc, ["I miss her so much.", "Why?"])


# --- determinism, digests, loading errors -----------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-audio", "tiny-text"])
def test_tiny_builds_are_deterministic(tmp_path, name, wavs):
    a, b = build_tiny(name, tmp_path / "a"), build_tiny(name, tmp_path / "b")
    assert checkpoint_digest(a) == checkpoint_digest(b)
    cls = HFAudioEncoder if name == "tiny-audio" else HFTextEncoder
    ea, eb = cls(a), cls(b)
    items = wavs if name == "tiny-audio" else ["Excuse me.", "I'm happy."]
    for x, y in zip(ea.encode(items), eb.encode(items), strict=True):
        assert torch.equal(x, y)


def test_digest_follows_the_weights(tmp_path, root):
    from safetensors.torch import load_file, save_file

    folder = ensure_tiny("tiny-audio", root)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert checkpoint_digest(copy) == checkpoint_digest(folder)
    weights = load_file(copy / "model.safetensors")
    key = sorted(weights)[0]
    weights[key] = weights[key] + 1
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert checkpoint_digest(copy) != checkpoint_digest(folder)
    (copy / "model.safetensors").unlink()
    with pytest.raises(EncoderError, match=r"no weight files \(\*\.safetensors or \*\.bin\)"):
        checkpoint_digest(copy)


def test_checkpoint_missing_weights_is_refused(tmp_path, root):
    from safetensors.torch import load_file, save_file

    folder = ensure_tiny("tiny-audio", root)
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(tmp_path / "model.safetensors")
    del weights["encoder.layers.0.attention.k_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        EncoderError,
        match=r"lacks 1 weights of Wav2Vec2Model \(e\.g\. "
        r"encoder\.layers\.0\.attention\.k_proj\.weight\): "
        r"its features would be random",
    ):
        HFAudioEncoder(tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code when loaded",))


def test_weight_file_with_pickled_code_is_refused(tmp_path, root):
    """A ``pytorch_model.bin`` holding code: transformers' weights-only load refuses it, and ksr
    says so in one line instead of torch's traceback."""
    folder = ensure_tiny("tiny-text", root)
    for f in folder.iterdir():
        if f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    torch.save({"embeddings.word_embeddings.weight": _RunsCode()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(EncoderError) as caught:
        HFTextEncoder(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "holds more than tensors (print), which ksr does not unpickle" in message
    assert "model.safetensors" in message


def test_text_model_is_not_a_speech_model(root):
    with pytest.raises(EncoderError, match=r"is a roberta model, not a speech model"):
        HFAudioEncoder(ensure_tiny("tiny-text", root))
    with pytest.raises(EncoderError, match=r"encoder 'tiny-text' is a text encoder, not audio"):
        load_encoder("tiny-text", modality="audio", tiny_root=root)


def test_ensure_tiny_rebuilds_an_incomplete_folder(tmp_path):
    half = tmp_path / "tiny-text-v1"
    half.mkdir()
    (half / "config.json").write_text("{")  # an interrupted build: no marker file
    folder = ensure_tiny("tiny-text", tmp_path)
    assert folder == half and (folder / "ksr-tiny.json").is_file()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "roberta"


def test_tiny_root_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("KSR_CACHE_DIR", str(tmp_path / "k"))
    assert tiny_root() == tmp_path / "k" / "tiny"
    monkeypatch.delenv("KSR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert tiny_root() == tmp_path / "x" / "ksr" / "tiny"
    assert tiny_root(tmp_path / "given") == tmp_path / "given"


def test_half_precision_path(root, audio, text, wavs):
    """The GPU path (float16) checked on the CPU: float32 CPU outputs, close to float32 runs.

    float16 keeps 11 bits (relative rounding 4.9e-4); on O(1) features through a few layers the
    tiny models move by ~3.5e-3, so 2e-2 bounds it while a wrong layer or mask is O(1) off."""
    a16 = load_encoder("tiny-audio", tiny_root=root, device="cpu", dtype=torch.float16)
    t16 = load_encoder("tiny-text", tiny_root=root, device="cpu", dtype=torch.float16)
    assert a16.describe()["dtype"] == "float16" and a16.digest == audio.digest
    for x, y in zip(a16.encode(wavs), audio.encode(wavs), strict=True):
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        torch.testing.assert_close(x, y, atol=2e-2, rtol=0)
    texts = ["Excuse me.", "Why are you so angry?"]
    for x, y in zip(t16.encode(texts), text.encode(texts), strict=True):
        torch.testing.assert_close(x, y, atol=2e-2, rtol=0)


# --- spec strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("hf:facebook/wav2vec2-base", EncoderSpec("hf", "facebook/wav2vec2-base")),
        ("hf:facebook/wav2vec2-base@layer=-1", EncoderSpec("hf", "facebook/wav2vec2-base", -1)),
        ("hf:/models/my@model@layer=12", EncoderSpec("hf", "/models/my@model", 12)),
        ("hf:microsoft/wavlm-large@revision=abc123@layer=6", EncoderSpec("hf", "microsoft/wavlm-large", 6, "abc123")),
        ("paper-text", EncoderSpec("hf", "roberta-large", -1)),
        ("paper-text@layer=12", EncoderSpec("hf", "roberta-large", 12)),
        ("tiny-audio", EncoderSpec("tiny", "tiny-audio")),
        (" tiny-text@layer=1 ", EncoderSpec("tiny", "tiny-text", 1)),
    ],
)
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "wav2vec2-base",
            r"unknown encoder spec 'wav2vec2-base': use one of hf:<hub id or "
            r"folder>, w2v1:<\.\.\.>, e2v:<\.\.\.>, paper-text, paper-audio, "
            r"e2v-plus-large, minilm, tiny-audio, tiny-text, fbank$",
        ),
        ("hf:", r"unknown encoder spec 'hf:'"),
        ("hf:x@layer=last", r"layer 'last' is not an integer"),
        ("hf:x@depth=3", r"unknown option @depth \(known: @layer, @revision, @mel\)"),
        ("hf:x@layer=1@layer=2", r"@layer given twice"),
        ("tiny-audio@revision=abc", r"built-in encoders have no @revision"),
    ],
)
def test_parse_spec_errors(spec, message):
    with pytest.raises(EncoderError, match=message):
        parse_spec(spec)


def test_spec_round_trip(audio, root):
    again = load_encoder(audio.spec, tiny_root=root)
    assert (again.spec, again.digest) == (audio.spec, audio.digest)


def test_missing_local_folder(tmp_path):
    with pytest.raises(EncoderError, match=r"^model folder not found: .*/nothing-here$"):
        load_encoder(f"hf:{tmp_path}/nothing-here")


def test_unknown_hub_id_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never the network
    with pytest.raises(
        EncoderError,
        match=r"^cannot (find model|read the config of) "
        r"'ksr-tests/no-such-model'",
    ):
        load_encoder("hf:ksr-tests/no-such-model")


# --- CLI --------------------------------------------------------------------------------------


def test_cli_encoders(root):
    runner = CliRunner()
    listing = runner.invoke(main, ["encoders"])
    assert listing.exit_code == 0
    assert "paper-text" in listing.output and "= hf:roberta-large@layer=-1" in listing.output
    shown = runner.invoke(main, ["encoders", "tiny-audio@layer=1", "--tiny-dir", str(root)])
    assert shown.exit_code == 0, shown.output
    assert "dim          32\n" in shown.output and "frame_rate   100.0\n" in shown.output
    assert "layer        1\n" in shown.output
    bad = runner.invoke(main, ["encoders", "nope"])
    assert bad.exit_code == 1 and "Error: unknown encoder spec 'nope'" in bad.output
