"""The native wav2vec 1.0 port (``w2v1:``): settings, weights, frame counts, safety, parity.

Without fairseq: tiny random checkpoints written in fairseq's format and key names, loaded
through the ``w2v1:`` spec; an independent plain reimplementation (written here from the facts
of fairseq's wav2vec.py, loop by loop) agrees at 1e-5.

With fairseq (skipped when ``import fairseq`` fails; ``tools/fairseq_parity.sh`` makes an
environment where it does, and sets KSR_REQUIRE_FAIRSEQ=1 so that a broken install fails instead
of skipping): fairseq's own ``Wav2VecModel`` is built from small and from the large default
settings, random weights with a fixed seed, saved as fairseq saves ({"args", "model"}), loaded
by ksr, and ``feature_aggregator(feature_extractor(wav))`` compared: max abs diff <= 1e-4.

Tolerances: the port and the reference do the same float32 operations in possibly another order
(conv algorithms, reduction order of the group-norm statistics), so their difference is a few
ulp per operation; features are O(1) (log compression, norms), so ~1e-6 after a dozen layers.
1e-5 (ours vs the plain reimplementation) and 1e-4 (vs fairseq, the brief's bound) are far
below what any real discrepancy (a wrong padding side, norm axis or residual scale) gives,
which is O(0.1) (checked by the control in test_reference_catches_a_wrong_setting).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ksr.extract.audio import AudioError
from ksr.extract.encoders import EncoderError, load_encoder, parse_spec
from ksr.extract.encoders.wav2vec1 import PAPER_ENV, Wav2Vec1, Wav2Vec1Config, build_wav2vec1, to_fairseq_keys

SEED = 20220523
LARGE_FEATURES = "[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1)]"
LARGE_AGGREGATOR = "[" + ", ".join(f"(512, {k}, 1)" for k in range(2, 14)) + "]"


def small_args(**changes) -> argparse.Namespace:
    """A small wav2vec 1.0: hop 5*4*2*2*2 = 160 (100 frames/s, as large), narrow layers.
    Widths change along the stack so that residual projections and width checks are used."""
    args = argparse.Namespace(
        arch="wav2vec",
        conv_feature_layers="[(16, 10, 5), (16, 8, 4)] + [(16, 4, 2)] * 3 + [(16, 1, 1)]",
        conv_aggregator_layers="[(16, 2, 1), (24, 3, 1), (24, 4, 1), (24, 5, 1)]",
        aggregator="cnn",
        log_compression=True,
        skip_connections_feat=True,
        skip_connections_agg=True,
        residual_scale=0.5,
        agg_zero_pad=False,
        no_conv_bias=False,
        non_affine_group_norm=False,
        activation="relu",
        vq_type="none",
        offset="auto",
        project_features="none",
        prediction_steps=3,
        num_negatives=2,
        dropout=0.1,
        dropout_features=0.1,
        dropout_agg=0.1,
        optimizer="adam",
        lr=[1e-5],
    )
    for k, v in changes.items():
        setattr(args, k, v)
    return args


def large_args() -> argparse.Namespace:
    """wav2vec large's settings (the paper's checkpoint records these; fairseq's defaults)."""
    return small_args(
        conv_feature_layers=LARGE_FEATURES,
        conv_aggregator_layers=LARGE_AGGREGATOR,
        skip_connections_feat=False,
        prediction_steps=12,
        num_negatives=10,
    )


def random_state(config: Wav2Vec1Config, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Random weights for our module, norms included (so that wrong affine use shows)."""
    torch.manual_seed(seed)
    model = Wav2Vec1(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("norm.bias") or name.endswith("conv.bias"):
                p.uniform_(-0.2, 0.2)
    return model.state_dict()


def write_checkpoint(path: Path, args, state_ours=None, *, extra_keys=True, **more) -> Path:
    """A checkpoint as fairseq writes it: {"args": Namespace, "model": fairseq names, ...},
    with the prediction head and some training state, as a real one has."""
    config = Wav2Vec1Config.from_args(args)
    state = to_fairseq_keys(state_ours if state_ours is not None else random_state(config))
    if extra_keys:
        dim = config.dim
        state["wav2vec_predictions.project_to_steps.weight"] = torch.randn(dim, dim, 1, 3)
        state["wav2vec_predictions.project_to_steps.bias"] = torch.randn(dim)
    ckpt = {
        "args": args,
        "model": state,
        "optimizer_history": [
            {
                "criterion_name": "BinaryCrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": np.float64(2.5)},
                "num_updates": 400000,
            }
        ],
        "extra_state": {"epoch": 30, "val_loss": np.float64(2.5)},
        **more,
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("w2v1") / "small.pt", small_args())


@pytest.fixture(scope="module")
def small(small_ckpt):
    return load_encoder(f"w2v1:{small_ckpt}", modality="audio", device="cpu")


def _wav(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# An independent plain reimplementation, from the facts (not from the port)


def _group_norm_1(x, weight, bias, eps=1e-5):
    """One group: mean and variance over all channels and all steps of each item."""
    mean = x.mean(dim=(1, 2), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight[None, :, None] + bias[None, :, None]
    return y


def _strided_conv(x, weight, stride, bias=None):
    """Conv1d as a loop over output steps (each step a matrix product)."""
    c_out, c_in, k = weight.shape
    steps = (x.shape[2] - k) // stride + 1
    w = weight.reshape(c_out, c_in * k)
    cols = [x[:, :, t * stride : t * stride + k].reshape(x.shape[0], c_in * k) @ w.T for t in range(steps)]
    y = torch.stack(cols, dim=2)
    return y if bias is None else y + bias[None, :, None]


def reference_features(args, state: dict, wav: np.ndarray) -> torch.Tensor:
    """(frames, dim) for one utterance, from fairseq-named weights and the written facts."""
    x = torch.from_numpy(wav).double()[None, None, :]
    sd = {k: v.double() for k, v in state.items()}
    act = F.gelu if args.activation == "gelu" else torch.relu
    scale = math.sqrt(args.residual_scale)
    feat_layers = Wav2Vec1Config.from_args(args).feature_layers
    for i, (_, _, stride) in enumerate(feat_layers):
        pre = f"feature_extractor.conv_layers.{i}"
        y = _strided_conv(x, sd[f"{pre}.0.weight"], stride)
        y = act(_group_norm_1(y, sd.get(f"{pre}.2.weight"), sd.get(f"{pre}.2.bias")))
        if args.skip_connections_feat and y.shape[1] == x.shape[1]:
            step = x.shape[2] // y.shape[2]
            y = (y + x[:, :, ::step][:, :, : y.shape[2]]) * scale
        x = y
    if args.log_compression:
        x = torch.log(1 + x.abs())
    agg_layers = Wav2Vec1Config.from_args(args).aggregator_layers
    for i, (_, k, _) in enumerate(agg_layers):
        pre = f"feature_aggregator.conv_layers.{i}"
        first = torch.zeros_like(x[:, :, :1]) if args.agg_zero_pad else x[:, :, :1]
        padded = torch.cat([first] * (k - 1) + [x], dim=2)
        y = _strided_conv(padded, sd[f"{pre}.1.weight"], 1, sd.get(f"{pre}.1.bias"))
        y = act(_group_norm_1(y, sd.get(f"{pre}.3.weight"), sd.get(f"{pre}.3.bias")))
        if args.skip_connections_agg:
            proj = sd.get(f"feature_aggregator.residual_proj.{i}.weight")
            res = x if proj is None else _strided_conv(x, proj, 1)
            y = (y + res) * scale
        x = y
    return x[0].T.float()


# --------------------------------------------------------------------------------------------
# Without fairseq


def test_declares_dim_frame_rate_and_digest(small, small_ckpt):
    assert small.dim == 24 and small.frame_rate == 100.0
    assert small.layer == "aggregator" and small.num_layers == 4
    assert small.model_type == "wav2vec" and small.modality == "audio"
    assert small.min_samples == 465  # (10,5),(8,4),(4,2)x3,(1,1): worked out by hand
    import hashlib

    assert small.digest == "sha256:" + hashlib.sha256(small_ckpt.read_bytes()).hexdigest()
    d = small.describe()
    assert d["layer"] == "aggregator" and d["dim"] == 24 and d["spec"] == f"w2v1:{small_ckpt}"


@pytest.mark.parametrize("n", [465, 624, 625, 3333, 16000, 16161])
def test_frame_count_formula_matches_the_model(small, n):
    feats = small.encode([_wav(n)])[0]
    assert feats.shape == (small.num_frames(n), 24) and feats.dtype == torch.float32
    # the same formula written out: 16000 samples -> 3199, 798, 398, 198, 98, 98 frames
    frames = n
    for k, s in [(10, 5), (8, 4), (4, 2), (4, 2), (4, 2), (1, 1)]:
        frames = (frames - k) // s + 1
    assert feats.shape[0] == frames
    if n == 16000:
        assert frames == 98


def test_too_short_and_not_mono_are_refused(small):
    with pytest.raises(AudioError, match="464 samples is shorter than the 465"):
        small.encode([_wav(464)])
    with pytest.raises(AudioError, match="mono"):
        small.encode([np.zeros((2, 1000), np.float32)])


def test_deterministic_and_batch_equals_one_at_a_time(small, small_ckpt):
    wavs = [_wav(4000, 1), _wav(9000, 2), _wav(4000, 3), _wav(4000, 4), _wav(1200, 5)]
    batch = small.encode(wavs)
    again = load_encoder(f"w2v1:{small_ckpt}", device="cpu").encode(wavs)
    for i, w in enumerate(wavs):
        alone = small.encode([w])[0]
        assert torch.allclose(batch[i], alone, atol=1e-5, rtol=0), i
        assert torch.equal(batch[i], again[i])
    assert small.encode([]) == []


def test_padding_would_change_the_features(small):
    """Why encode never pads: the one-group norms see the whole (padded) length."""
    w = _wav(4000, 1)
    alone = small.encode([w])[0]
    padded = small.encode([np.concatenate([w, np.zeros(3000, np.float32)])])[0][: len(alone)]
    assert (padded - alone).abs().max() > 1e-2


def test_same_length_groups_are_split_by_the_sample_budget(small, monkeypatch):
    wavs = [_wav(2000, s) for s in range(5)]
    whole = small.encode(wavs)
    monkeypatch.setattr(small, "max_batch_samples", 4000)  # two per pass
    for a, b in zip(whole, small.encode(wavs), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"skip_connections_feat": False, "log_compression": False, "activation": "gelu"},
        {"agg_zero_pad": True, "no_conv_bias": True, "non_affine_group_norm": True, "residual_scale": 0.3},
        {"skip_connections_agg": False},
    ],
)
def test_port_matches_a_plain_reimplementation(tmp_path, changes):
    args = small_args(**changes)
    state = random_state(Wav2Vec1Config.from_args(args), seed=SEED + len(changes))
    path = write_checkpoint(tmp_path / "c.pt", args, state)
    encoder = load_encoder(f"w2v1:{path}", device="cpu")
    for n, seed in [(5000, 11), (465, 12), (1700, 13)]:
        wav = _wav(n, seed)
        ref = reference_features(args, to_fairseq_keys(state), wav)
        got = encoder.encode([wav])[0]
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1e-5


def test_reference_catches_a_wrong_setting(tmp_path):
    """Control: the tolerance above is tight enough to see a wrong setting."""
    args = small_args()
    state = random_state(Wav2Vec1Config.from_args(args))
    path = write_checkpoint(tmp_path / "c.pt", args, state)
    wav = _wav(5000, 11)
    got = load_encoder(f"w2v1:{path}", device="cpu").encode([wav])[0]
    wrong = reference_features(small_args(agg_zero_pad=True), to_fairseq_keys(state), wav)
    assert (got - wrong).abs().max().item() > 1e-2


def test_layer_lists_are_read_without_eval():
    config = Wav2Vec1Config.from_args(large_args())
    assert config.hop == 160 and config.dim == 512 and len(config.aggregator_layers) == 12
    assert [k for _, k, _ in config.aggregator_layers] == list(range(2, 14))
    same = Wav2Vec1Config.from_args(
        small_args(
            conv_feature_layers="[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3 + [(512, 1, 1)] * 2",
            conv_aggregator_layers=LARGE_AGGREGATOR,
        )
    )
    assert same.feature_layers == config.feature_layers
    for text in [
        "__import__('os').system('true')",
        "[(512, 10, 5)] * 10**9",
        "[(512, -1, 1)]",
        "[(512, 10)]",
        "[]",
        "(512, 10, 5)",
    ]:
        with pytest.raises(EncoderError, match="conv_feature_layers"):
            Wav2Vec1Config.from_args(small_args(conv_feature_layers=text))


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"aggregator": "gru"}, "aggregator='gru'"),
        ({"vq_type": "gumbel"}, "vq_type='gumbel'"),
        ({"activation": "tanh"}, "activation='tanh'"),
        ({"arch": "wav2vec2"}, "arch 'wav2vec2'"),
        ({"conv_aggregator_layers": "[(16, 3, 2)]"}, "conv_aggregator_layers with stride 2"),
        ({"log_compression": "yes"}, "log_compression='yes'"),
        ({"residual_scale": -1.0}, "residual_scale=-1.0"),
        ({"conv_feature_layers": None}, "lack conv_feature_layers"),
        ({"log_compression": None}, "lack log_compression"),
        ({"skip_connections_agg": None}, "lack skip_connections_agg"),
    ],
)
def test_unsupported_settings_are_refused_by_name(tmp_path, changes, named):
    args = small_args(**changes)
    path = tmp_path / "c.pt"
    torch.save({"args": args, "model": to_fairseq_keys(random_state(Wav2Vec1Config.from_args(small_args())))}, path)
    with pytest.raises(EncoderError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_encoder(f"w2v1:{path}", device="cpu")


def test_defaults_for_settings_the_checkpoint_does_not_record(tmp_path):
    """An old checkpoint without activation / vq_type / encoder (they came later): fairseq's
    defaults (relu, none); audio_cpc is wav2vec's old name."""
    args = small_args(arch="audio_cpc")
    del args.activation, args.vq_type, args.skip_connections_feat, args.residual_scale
    state = random_state(Wav2Vec1Config.from_args(args))
    path = write_checkpoint(tmp_path / "c.pt", args, state)
    wav = _wav(3000, 3)
    ref = reference_features(small_args(skip_connections_feat=False), to_fairseq_keys(state), wav)
    assert (load_encoder(f"w2v1:{path}", device="cpu").encode([wav])[0] - ref).abs().max() <= 1e-5


def test_missing_unknown_and_misshapen_weights_are_refused(tmp_path):
    args = small_args()
    config = Wav2Vec1Config.from_args(args)
    good = to_fairseq_keys(random_state(config))

    def load(state):
        path = tmp_path / "c.pt"
        torch.save({"args": args, "model": state}, path)
        return load_encoder(f"w2v1:{path}", device="cpu")

    load(good)  # the prediction head may be absent
    missing = dict(good)
    del missing["feature_aggregator.conv_layers.2.1.weight"]
    with pytest.raises(
        EncoderError,
        match=r"1 weights missing.*feature_aggregator\.conv_layers"
        r"\.2\.1\.weight",
    ):
        load(missing)
    no_proj = dict(good)
    del no_proj["feature_aggregator.residual_proj.1.weight"]  # 16 -> 24 needs a projection
    with pytest.raises(EncoderError, match=r"residual_proj\.1\.weight"):
        load(no_proj)
    unknown = dict(good, **{"feature_extractor.extra.weight": torch.zeros(3)})
    with pytest.raises(EncoderError, match=r"do not account for: feature_extractor\.extra"):
        load(unknown)
    extra_proj = dict(good, **{"feature_aggregator.residual_proj.0.weight": torch.zeros(16, 16, 1)})
    with pytest.raises(EncoderError, match=r"residual_proj\.0\.weight"):
        load(extra_proj)  # 16 -> 16 has no projection in fairseq
    bad_shape = dict(good)
    bad_shape["feature_extractor.conv_layers.0.0.weight"] = torch.zeros(16, 1, 9)
    with pytest.raises(EncoderError, match=r"conv_layers\.0\.0\.weight has shape \(16, 1, 9\)"):
        load(bad_shape)
    with pytest.raises(
        EncoderError,
        match=r"20 weights .*do not account for: "
        r"feature_aggregator\.conv_layers\.0\.3\.bias",
    ):
        torch.save(
            {"args": small_args(non_affine_group_norm=True), "model": good}, tmp_path / "c.pt"
        )  # norm weights that the settings say do not exist
        load_encoder(f"w2v1:{tmp_path / 'c.pt'}", device="cpu")


class _Payload:
    """An object that would run a command when unpickled by plain pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_with_pickled_code_are_refused(tmp_path):
    marker = tmp_path / "ran"
    args = small_args()
    state = to_fairseq_keys(random_state(Wav2Vec1Config.from_args(args)))
    path = tmp_path / "evil.pt"
    torch.save({"args": args, "model": state, "extra_state": _Payload(marker)}, path)
    with pytest.raises(EncoderError, match=r"refused to load.*(posix|os)\.system"):
        load_encoder(f"w2v1:{path}", device="cpu")
    assert not marker.exists()
    # a class instance in the settings (not a Namespace) is refused the same way
    torch.save({"args": args, "model": state, "cfg": {"model": _Settings()}}, path)
    with pytest.raises(EncoderError, match=r"refused to load.*_Settings"):
        load_encoder(f"w2v1:{path}", device="cpu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(EncoderError, match="not a readable torch checkpoint"):
        load_encoder(f"w2v1:{garbage}", device="cpu")
    with pytest.raises(EncoderError, match="not found"):
        load_encoder(f"w2v1:{tmp_path / 'absent.pt'}", device="cpu")
    torch.save({"model": state}, path)
    with pytest.raises(EncoderError, match="no model settings"):
        load_encoder(f"w2v1:{path}", device="cpu")


class _Settings:
    pass


def test_legacy_serialization_format(tmp_path, small):
    """wav2vec_large.pt (2019) predates torch's zip format: the legacy format loads the same."""
    args = small_args()
    state = to_fairseq_keys(random_state(Wav2Vec1Config.from_args(args)))  # = small's weights
    path = tmp_path / "legacy.pt"
    torch.save(
        {"args": args, "model": state, "extra_state": {"val_loss": np.float64(2.5)}},
        path,
        _use_new_zipfile_serialization=False,
    )
    wav = _wav(3000, 6)
    got = load_encoder(f"w2v1:{path}", device="cpu").encode([wav])[0]
    assert torch.equal(got, small.encode([wav])[0])


def test_newer_fairseq_cfg_checkpoints(tmp_path):
    """fairseq >= 0.10 writes {"args": None, "cfg": {"model": {...}}} (or a Namespace there)."""
    args = small_args()
    state = random_state(Wav2Vec1Config.from_args(args))
    wav = _wav(3000, 5)
    ref = reference_features(args, to_fairseq_keys(state), wav)
    for model_cfg in ({**vars(args), "_name": "wav2vec"}, args):
        path = tmp_path / "cfg.pt"
        torch.save(
            {"args": None, "cfg": {"model": model_cfg, "task": {"_name": "audio"}}, "model": to_fairseq_keys(state)},
            path,
        )
        got = load_encoder(f"w2v1:{path}", device="cpu").encode([wav])[0]
        assert (got - ref).abs().max() <= 1e-5


def test_spec_and_paper_audio_preset(small_ckpt, monkeypatch):
    spec = parse_spec(f"w2v1:{small_ckpt}")
    assert spec.kind == "w2v1" and spec.source == str(small_ckpt)
    assert parse_spec("paper-audio").kind == "w2v1"
    monkeypatch.delenv(PAPER_ENV, raising=False)
    with pytest.raises(EncoderError, match=PAPER_ENV):
        load_encoder("paper-audio")
    monkeypatch.setenv(PAPER_ENV, str(small_ckpt))
    enc = load_encoder("paper-audio", modality="audio", device="cpu")
    assert enc.dim == 24 and enc.spec == f"w2v1:{small_ckpt}"
    with pytest.raises(EncoderError, match="is a audio encoder, not text"):
        load_encoder("paper-audio", modality="text", device="cpu")
    with pytest.raises(EncoderError, match="no @layer"):
        load_encoder(f"w2v1:{small_ckpt}@layer=3", device="cpu")


def test_runs_in_half_precision_when_asked(small_ckpt, small):
    half = load_encoder(f"w2v1:{small_ckpt}", device="cpu", dtype=torch.bfloat16)
    wav = _wav(4000, 9)
    got, ref = half.encode([wav])[0], small.encode([wav])[0]
    assert got.dtype == torch.float32 and half.describe()["dtype"] == "bfloat16"
    assert (got - ref).abs().max() < 0.1


# --------------------------------------------------------------------------------------------
# Parity with fairseq itself (its own environment: tools/fairseq_parity.sh)


def _fairseq():
    try:
        import fairseq  # noqa: F401
        from fairseq.models.wav2vec.wav2vec import Wav2VecConfig, Wav2VecModel
    except Exception as err:  # noqa: BLE001 - any broken install is a skip (or a failure)
        if os.environ.get("KSR_REQUIRE_FAIRSEQ") == "1":
            pytest.fail(f"fairseq is required here but does not import: {err!r}")
        pytest.skip(f"fairseq not installed ({type(err).__name__}); run tools/fairseq_parity.sh")
    return Wav2VecConfig, Wav2VecModel


def _fairseq_model(args: argparse.Namespace):
    """fairseq's Wav2VecModel from a Namespace, as fairseq builds it from a checkpoint."""
    Wav2VecConfig, Wav2VecModel = _fairseq()
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    full = argparse.Namespace(
        **vars(args), task="audio_pretraining", criterion="wav2vec", infonce=False, _name="wav2vec"
    )
    with warnings.catch_warnings():  # hydra's deprecation notes
        warnings.simplefilter("ignore")
        try:
            cfg = convert_namespace_to_omegaconf(full).model
        except Exception:  # noqa: BLE001 - older fairseq: the dataclass straight
            fields = {k: v for k, v in vars(args).items() if k in Wav2VecConfig.__dataclass_fields__}
            cfg = Wav2VecConfig(**{**fields, "infonce": False})
        return Wav2VecModel(cfg).eval()


FAIRSEQ_CASES = {
    "small": small_args(),
    "small-variant": small_args(
        skip_connections_feat=False,
        log_compression=False,
        activation="gelu",
        agg_zero_pad=True,
        no_conv_bias=True,
        non_affine_group_norm=True,
        residual_scale=0.3,
    ),
    "small-no-skip": small_args(skip_connections_agg=False),
    "large": large_args(),
}


@pytest.mark.parametrize("which", list(FAIRSEQ_CASES))
def test_matches_fairseq(tmp_path, which, record_property):
    _fairseq()
    args = FAIRSEQ_CASES[which]
    torch.manual_seed(SEED)
    fs = _fairseq_model(args)
    norms = re.compile(
        r"feature_extractor\.conv_layers\.\d+\.2\.|"
        r"feature_aggregator\.conv_layers\.\d+\.3\."
    )
    with torch.no_grad():  # non-trivial norms and biases, as a trained model has
        for name, p in fs.named_parameters():
            if norms.match(name) and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif norms.match(name) or name.endswith("1.bias"):
                p.uniform_(-0.2, 0.2)
    # fairseq built what the settings say (so that the comparison is not vacuous)
    assert fs.feature_extractor.skip_connections == args.skip_connections_feat
    assert fs.feature_aggregator.skip_connections == args.skip_connections_agg
    assert fs.feature_extractor.log_compression == args.log_compression
    assert len(fs.feature_aggregator.conv_layers) == len(Wav2Vec1Config.from_args(args).aggregator_layers)
    path = tmp_path / f"{which}.pt"
    torch.save({"args": args, "model": fs.state_dict()}, path)  # as fairseq 0.x saved it
    encoder = load_encoder(f"w2v1:{path}", device="cpu", dtype=torch.float32)
    worst = 0.0
    seconds = 2.0 if which == "large" else 3.0
    for n, seed in [(int(16000 * seconds), 21), (encoder.min_samples, 22), (7777, 23)]:
        wav = _wav(n, seed)
        with torch.inference_mode():
            x = torch.from_numpy(wav)[None]
            ref = fs.feature_aggregator(fs.feature_extractor(x))[0].T
        got = encoder.encode([wav])[0]
        assert got.shape == ref.shape == (encoder.num_frames(n), encoder.dim)
        worst = max(worst, (got - ref).abs().max().item())
        scale = ref.abs().max().item()
    print(f"\nfairseq parity ({which}): max abs diff {worst:.3g} (features up to {scale:.3g})")
    record_property(f"max_abs_diff_{which}", worst)
    assert worst <= 1e-4


def test_fairseq_checkpoint_reader_agrees(tmp_path):
    """fairseq's own loader reads the checkpoint we write in tests the same way."""
    _fairseq()
    from fairseq import checkpoint_utils

    args = small_args()
    path = write_checkpoint(tmp_path / "c.pt", args, extra_keys=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    fs = _fairseq_model(args)
    missing, unexpected = fs.load_state_dict(state["model"], strict=False)
    assert not unexpected and all(k.startswith("wav2vec_predictions.") for k in missing)
    wav = _wav(6000, 31)
    with torch.inference_mode():
        ref = fs.feature_aggregator(fs.feature_extractor(torch.from_numpy(wav)[None]))[0].T
    got = build_wav2vec1(path)(torch.from_numpy(wav)[None])[0].T
    assert (got - ref).abs().max().item() <= 1e-5


def test_fairseq_cfg_checkpoint(tmp_path):
    """fairseq >= 0.10 saves {"args": None, "cfg": plain container of its DictConfig}; a cfg
    pickled as omegaconf objects is refused by name (it would need their code to unpickle)."""
    _fairseq()
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    args = small_args(activation="gelu")
    full = argparse.Namespace(
        **vars(args), task="audio_pretraining", criterion="wav2vec", infonce=False, _name="wav2vec"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = convert_namespace_to_omegaconf(full)
    fs = _fairseq_model(args)
    path = tmp_path / "cfg.pt"
    torch.save(
        {"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": fs.state_dict()},
        path,
    )
    wav = _wav(5000, 41)
    with torch.inference_mode():
        ref = fs.feature_aggregator(fs.feature_extractor(torch.from_numpy(wav)[None]))[0].T
    got = load_encoder(f"w2v1:{path}", device="cpu").encode([wav])[0]
    assert (got - ref).abs().max().item() <= 1e-4
    torch.save({"args": None, "cfg": cfg, "model": fs.state_dict()}, path)
    with pytest.raises(EncoderError, match=r"refused to load.*omegaconf"):
        load_encoder(f"w2v1:{path}", device="cpu")
