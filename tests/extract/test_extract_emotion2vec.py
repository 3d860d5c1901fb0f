"""Native emotion2vec (``e2v:``): loading FunASR checkpoint folders, frames, refusals, parity.

Checkpoint folders are written as FunASR releases them (``model.pt`` with FunASR's weight names,
``config.yaml`` with ``model: Emotion2vec`` + ``model_conf``), from small settings with random
weights (no download). Where FunASR imports (``make funasr-parity`` builds such an environment,
``.venv-funasr``), FunASR's own ``Emotion2vec`` is built from base- and large-size settings with
random weights, saved the same way, and its frame features (``inference(granularity="frame")``)
are compared with ksr's: max abs <= 1e-5 in float32 (the same operations in the same order give
0 or a few ulp). ``KSR_REQUIRE_FUNASR=1`` turns the skip into a failure.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import yaml

from ksr.extract.audio import AudioError
from ksr.extract.encoders import EncoderError, load_encoder
from ksr.extract.encoders.emotion2vec import E2VConfig, Emotion2Vec, alibi_slopes, funasr_names

SPEC = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
SMALL_SPEC = "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] * 2"


def model_conf(size: str = "small", **audio_changes) -> dict:
    """A complete FunASR model_conf (every key FunASR's constructors read): data2vec 2.0 audio
    settings with emotion2vec's normalisation and extra tokens; ``base`` and ``large`` sizes as
    released, ``small`` for quick tests."""
    dims = {
        "small": (32, 2, 4, 1, SMALL_SPEC, 4, 8),
        "base": (768, 8, 12, 4, SPEC, 12, 95),
        "large": (1024, 16, 16, 8, SPEC, 16, 95),
    }[size]
    embed, depth, heads, prenet, spec, alibi_heads, pos_width = dims
    audio = {
        "type": "AUDIO",
        "prenet_depth": prenet,
        "prenet_layerdrop": 0.0,
        "prenet_dropout": 0.1,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "num_extra_tokens": 10,
        "init_extra_token_zero": False,
        "mask_noise_std": 0.01,
        "mask_prob_min": None,
        "mask_prob": 0.5,
        "inverse_mask": False,
        "mask_prob_adjust": 0.05,
        "keep_masked_pct": 0.0,
        "mask_length": 5,
        "add_masks": False,
        "remove_masks": False,
        "mask_dropout": 0.0,
        "encoder_zero_mask": True,
        "mask_channel_prob": 0.0,
        "mask_channel_length": 64,
        "ema_local_encoder": False,
        "local_grad_mult": 1.0,
        "use_alibi_encoder": True,
        "alibi_scale": 1.0,
        "learned_alibi": False,
        "alibi_max_pos": None,
        "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True,
        "learned_alibi_scale_per_layer": size == "large",
        "num_alibi_heads": alibi_heads,
        "model_depth": depth,
        "decoder": {
            "decoder_dim": 16,
            "decoder_groups": 4,
            "decoder_kernel": 7,
            "decoder_layers": 2,
            "input_dropout": 0.1,
            "add_positions_masked": False,
            "add_positions_all": False,
            "decoder_residual": True,
            "projection_layers": 1,
            "projection_ratio": 2.0,
        },
        "extractor_mode": "layer_norm",
        "feature_encoder_spec": spec,
        "conv_pos_width": pos_width,
        "conv_pos_groups": 4 if size == "small" else 16,
        "conv_pos_depth": 5 if size != "small" else 2,
        "conv_pos_pre_ln": False,
    }
    audio.update(audio_changes)
    return {
        "loss_beta": 0.0,
        "loss_scale": None,
        "depth": depth,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "num_heads": heads,
        "norm_eps": 1e-5,
        "norm_affine": True,
        "encoder_dropout": 0.1,
        "post_mlp_drop": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "dropout_input": 0.0,
        "layerdrop": 0.05,
        "embed_dim": embed,
        "mlp_ratio": 4.0,
        "layer_norm_first": False,
        "average_top_k_layers": depth,
        "end_of_block_targets": False,
        "clone_batch": 8,
        "layer_norm_target_layer": False,
        "batch_norm_target_layer": False,
        "instance_norm_target_layer": True,
        "instance_norm_targets": False,
        "layer_norm_targets": False,
        "ema_decay": 0.999,
        "ema_same_dtype": True,
        "log_norms": True,
        "ema_end_decay": 0.99999,
        "ema_anneal_end_step": 20000,
        "ema_encoder_only": False,
        "max_update": 100000,
        "normalize": True,
        "modalities": {"audio": audio},
    }


def random_funasr_state(conf: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under FunASR's names (norms and ALiBi scales away from their initial
    values, so that a wrong use shows), plus a decoder and a classifier head to be ignored."""
    c = E2VConfig.from_model_conf(conf)
    torch.manual_seed(seed)
    model = Emotion2Vec(c)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif "norm" in name or name.endswith(".bias"):
                p.uniform_(-0.2, 0.2)
            elif name in ("alibi_scale", "extra_tokens"):
                p.uniform_(0.2, 1.5)
    ours = model.state_dict()
    state = {theirs: ours[mine].clone() for theirs, mine in funasr_names(c).items()}
    state["modality_encoders.AUDIO.decoder.proj.weight"] = torch.randn(c.embed_dim, 16)
    state["proj.weight"] = torch.randn(9, c.embed_dim)
    return state


def write_folder(folder, conf: dict, state=None, model=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(random_funasr_state(conf) if state is None else state, folder / "model.pt")
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"model": model or "Emotion2vec", "model_conf": conf, "frontend": None})
    )
    return folder


def _wav(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.1 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("e2v") / "small", model_conf("small"))


@pytest.fixture(scope="module")
def small(small_folder):
    return load_encoder(f"e2v:{small_folder}", modality="audio", device="cpu")


def test_declares(small, small_folder):
    d = small.describe()
    assert {
        k: d[k]
        for k in (
            "modality",
            "model_type",
            "dim",
            "layer",
            "num_layers",
            "frame_rate",
            "sample_rate",
            "min_samples",
            "revision",
        )
    } == {
        "modality": "audio",
        "model_type": "emotion2vec",
        "dim": 32,
        "layer": 3,
        "num_layers": 3,
        "frame_rate": 50.0,
        "sample_rate": 16000,
        "min_samples": 400,
        "revision": None,
    }
    assert d["spec"] == d["name"] == f"e2v:{small_folder}"
    assert d["digest"].startswith("sha256:") and len(d["digest"]) == 71
    # The same folder given by its model.pt is the same encoder.
    assert load_encoder(f"e2v:{small_folder / 'model.pt'}", device="cpu").digest == d["digest"]


def _frames(n: int) -> int:
    for k, s in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        n = (n - k) // s + 1
    return n


@pytest.mark.parametrize("n", [400, 719, 720, 16000, 16319, 16320, 48000])
def test_frame_counts(small, n):
    assert small.num_frames(n) == _frames(n) >= 1
    assert small.encode([_wav(n, n)])[0].shape == (_frames(n), 32)


def test_frame_count_is_about_50_per_second(small):
    assert _frames(16000) == 49 and _frames(160000) == 499
    assert small.num_frames(399) == 0
    with pytest.raises(AudioError, match="399 samples is shorter than the 400"):
        small.encode([_wav(399)])


def test_alibi_slopes():
    assert alibi_slopes(8) == pytest.approx([2.0**-i for i in range(1, 9)], rel=1e-12)
    assert alibi_slopes(16) == pytest.approx([2.0 ** (-i / 2) for i in range(1, 17)], rel=1e-12)
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads (the odd powers).
    assert alibi_slopes(12) == pytest.approx(
        [2.0**-i for i in range(1, 9)] + [2.0 ** (-i / 2) for i in (1, 3, 5, 7)], rel=1e-12
    )


def test_normalised_input_ignores_loudness(small):
    """model_conf.normalize: the waveform is standardised first, so gain does not matter."""
    wav = _wav(20000, 3)
    a, b = small.encode([wav])[0], small.encode([wav * 7.5])[0]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_batch_equals_one_at_a_time(small):
    wavs = [_wav(n, n) for n in (5000, 16000, 9999)]
    for w, row in zip(wavs, small.encode(wavs), strict=True):
        assert torch.equal(row, small.encode([w])[0])


def test_every_weight_takes_part(small_folder, tmp_path):
    """Changing any one group of weights changes the features (none is loaded but unused).
    Random changes: a scale-and-shift of a token is invisible through the layer norm after it."""
    conf = model_conf("small")
    base = load_encoder(f"e2v:{small_folder}", device="cpu").encode([_wav(8000)])[0]
    state = torch.load(small_folder / "model.pt", weights_only=True)
    for key in (
        "modality_encoders.AUDIO.local_encoder.conv_layers.3.2.1.weight",
        "modality_encoders.AUDIO.relative_positional_encoder.2.0.bias",
        "modality_encoders.AUDIO.extra_tokens",
        "modality_encoders.AUDIO.alibi_scale",
        "modality_encoders.AUDIO.context_encoder.norm.weight",
        "modality_encoders.AUDIO.context_encoder.blocks.0.attn.qkv.weight",
        "blocks.1.norm2.bias",
    ):
        changed = dict(state)
        changed[key] = state[key] + 0.5 * torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0))
        folder = write_folder(tmp_path / key.replace(".", "_"), conf, changed)
        out = load_encoder(f"e2v:{folder}", device="cpu").encode([_wav(8000)])[0]
        assert (out - base).abs().max() > 1e-3, key


def test_missing_and_unknown_weights_are_refused(tmp_path):
    conf = model_conf("small")
    state = random_funasr_state(conf)
    lacking = dict(state)
    del lacking["blocks.0.mlp.fc1.weight"]
    with pytest.raises(EncoderError, match=r"model.pt lacks 1 weights .*blocks.0.mlp.fc1.weight"):
        load_encoder(f"e2v:{write_folder(tmp_path / 'a', conf, lacking)}", device="cpu")
    extra = {**state, "blocks.9.mlp.fc1.weight": torch.zeros(1)}
    with pytest.raises(
        EncoderError,
        match=r"1 weights the settings do not account for "
        r"\(e.g. blocks.9.mlp.fc1.weight\)",
    ):
        load_encoder(f"e2v:{write_folder(tmp_path / 'b', conf, extra)}", device="cpu")
    shaped = {**state, "blocks.0.mlp.fc1.weight": torch.zeros(3, 3)}
    with pytest.raises(EncoderError, match="model.pt does not fit config.yaml"):
        load_encoder(f"e2v:{write_folder(tmp_path / 'c', conf, shaped)}", device="cpu")


class _Marker:
    def __reduce__(self):
        return (print, ("ran",))


def test_unsafe_or_wrong_files_are_refused(tmp_path, capsys):
    conf = model_conf("small")
    state = {**random_funasr_state(conf), "evil": _Marker()}
    with pytest.raises(EncoderError, match="cannot be loaded safely"):
        load_encoder(f"e2v:{write_folder(tmp_path / 'a', conf, state)}", device="cpu")
    assert "ran" not in capsys.readouterr().out
    with pytest.raises(EncoderError, match="does not describe an Emotion2vec model"):
        load_encoder(f"e2v:{write_folder(tmp_path / 'b', conf, model='Paraformer')}", device="cpu")
    pre_norm = copy.deepcopy(conf)
    pre_norm["layer_norm_first"] = True
    with pytest.raises(EncoderError, match="layer_norm_first: true is not supported"):
        load_encoder(f"e2v:{write_folder(tmp_path / 'c', pre_norm)}", device="cpu")
    with pytest.raises(EncoderError, match="not found .*model.pt and config.yaml"):
        load_encoder(f"e2v:{tmp_path / 'nowhere'}", device="cpu")
    with pytest.raises(EncoderError, match="takes no @layer"):
        load_encoder(f"e2v:{tmp_path / 'a'}@layer=3", device="cpu")


def test_plus_large_preset_reads_the_variable(small_folder, monkeypatch):
    monkeypatch.delenv("KSR_EMOTION2VEC_PLUS_LARGE", raising=False)
    with pytest.raises(EncoderError, match=r"needs the folder .* in \$KSR_EMOTION2VEC_PLUS_LARGE"):
        load_encoder("e2v-plus-large", device="cpu")
    monkeypatch.setenv("KSR_EMOTION2VEC_PLUS_LARGE", str(small_folder))
    assert load_encoder("e2v-plus-large", device="cpu").spec == f"e2v:{small_folder}"


# --- parity with FunASR (in .venv-funasr: make funasr-parity) ---------------------------------


def _funasr():
    try:
        from funasr.models.emotion2vec.model import Emotion2vec

        return Emotion2vec
    except ImportError:
        if os.environ.get("KSR_REQUIRE_FUNASR") == "1":
            raise
        pytest.skip("FunASR is not installed (make funasr-parity runs this in .venv-funasr)")


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_parity_with_funasr(size, tmp_path):
    Emotion2vec = _funasr()
    conf = model_conf(size)
    torch.manual_seed(1)
    theirs = Emotion2vec(model_conf=conf, vocab_size=-1)
    with torch.no_grad():  # every weight random, norms and ALiBi scales away from init
        for name, p in theirs.named_parameters():
            if name.endswith("alibi_scale") or name.endswith("extra_tokens"):
                p.uniform_(0.2, 1.5)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.2, 0.2)
    theirs.eval()
    folder = write_folder(tmp_path / size, conf, theirs.state_dict())
    ours = load_encoder(f"e2v:{folder}", device="cpu")
    worst = 0.0
    for n in (16000, 37123):
        wav = _wav(n, n)
        with torch.inference_mode():
            res, _ = theirs.inference([torch.from_numpy(wav)], key=["u"], granularity="frame", device="cpu")
        want = torch.as_tensor(res[0]["feats"])
        got = ours.encode([wav])[0]
        assert got.shape == want.shape == (ours.num_frames(n), conf["embed_dim"])
        worst = max(worst, (got - want).abs().max().item())
    print(
        f"\nfunasr parity ({size}): max abs {worst:.3g} over 2 utterances, "
        f"{sum(p.numel() for p in theirs.parameters()) / 1e6:.0f} M parameters"
    )
    assert worst <= 1e-5
