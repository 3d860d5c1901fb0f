"""The model against the plain reference forward, its size, inputs and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import reference_forward
from support.model_inputs import padded_inputs, small_config

from ksr.fuse import KSTransformer, ModelConfig, count_parameters, to_official_state_dict

TSV = Path(__file__).parents[1] / "data" / "official_state_dict.tsv"


def reference_logits(model, audio, text, am, tm, **quirk_changes):
    sd = {k: v.double() for k, v in to_official_state_dict(model).items()}
    return reference_forward.forward(
        sd,
        audio.double(),
        text.double(),
        am,
        tm,
        heads=model.cfg.num_heads,
        keep_rate=model.cfg.keep_rate,
        **quirk_changes,
    )


@pytest.mark.parametrize(
    "cfg",
    [
        small_config(),
        small_config(num_layers=(1, 0, 2), num_classes=6),  # no CCAB: the stack is 2x, the model 3x
        small_config(num_layers=(3, 3, 0), keep_rate=0.3, audio_dim=8, text_dim=32, num_heads=2),
        small_config(num_layers=(0, 1, 1), keep_rate=0.9),
    ],
    ids=["small", "no-ccab", "no-fusion", "no-encoder"],
)
@pytest.mark.parametrize("junk", [False, True], ids=["zero-padding", "junk-padding"])
def test_model_matches_plain_reference(cfg, junk):
    model = KSTransformer(cfg).double().eval()
    audio, text, am, tm = padded_inputs(cfg, [37, 21, 5], [11, 7, 2], seed=3, dtype=torch.float64, junk_in_padding=junk)
    with torch.no_grad():
        got = model(audio, text, am, tm)
    want = reference_logits(model, audio, text, am, tm)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_full_lengths_in_float32_within_1e5():
    cfg = small_config(max_positions=2000)
    model = KSTransformer(cfg).eval()
    audio, text, am, tm = padded_inputs(cfg, [460, 300, 33], [20, 12, 1], ta=460, tt=20, seed=5)
    with torch.no_grad():
        got = model(audio, text, am, tm).double()
    want = reference_logits(model, audio, text, am, tm)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_default_model_matches_public_state_dict_layout():
    model = KSTransformer(ModelConfig())
    rows = [
        line.rstrip("\n").split("\t")
        for line in TSV.read_text().splitlines()
        if line and not line.startswith(("#", "key\t"))
    ]
    ours = to_official_state_dict(model)
    assert [r[0] for r in rows] == list(ours)
    for key, shape, dtype, _numel, _kind, _requires_grad in rows:
        assert str(tuple(ours[key].shape)).replace(" ", "") == shape.replace(" ", ""), key
        assert str(ours[key].dtype) == "torch." + dtype
    params = dict(model.named_parameters())
    assert [params[k].requires_grad for k in model.state_dict()] == [r[5] == "True" for r in rows]
    assert count_parameters(model) == {"total": 119_116_676, "trainable": 85_324_676, "entries": 408}


def test_batch_items_are_independent():
    cfg = small_config()
    model = KSTransformer(cfg).double().eval()
    audio, text, am, tm = padded_inputs(cfg, [37, 12], [11, 3], dtype=torch.float64)
    with torch.no_grad():
        both = model(audio, text, am, tm)
        second = model(audio[1:], text[1:], am[1:], tm[1:])
    torch.testing.assert_close(both[1:], second, rtol=1e-12, atol=1e-12)


def test_masks_default_to_no_padding():
    cfg = small_config()
    model = KSTransformer(cfg).eval()
    audio, text, am, tm = padded_inputs(cfg, [37, 37], [11, 11])
    with torch.no_grad():
        assert torch.equal(model(audio, text), model(audio, text, am, tm))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a, t, am, tm: (a[..., :-1], t, am, tm), r"audio features must be \(batch, length, 16\)"),
        (lambda a, t, am, tm: (a, t[:1], am, tm), "audio batch 2 != text batch 1"),
        (lambda a, t, am, tm: (a, t, am.long(), tm), "audio_padding_mask must be bool"),
        (lambda a, t, am, tm: (a, t, am, tm[:, :-1]), r"text_padding_mask must be bool of shape \(2, 11\)"),
    ],
)
def test_bad_inputs_are_refused(change, message):
    cfg = small_config()
    model = KSTransformer(cfg)
    with pytest.raises(ValueError, match=message):
        model(*change(*padded_inputs(cfg, [37, 5], [11, 2])))


def test_too_short_for_keep_rate_is_refused():
    cfg = small_config(keep_rate=0.1)
    model = KSTransformer(cfg)
    with pytest.raises(ValueError, match=r"keeps int\(9 keys \* keep_rate 0.1\) = 0 keys"):
        model(*padded_inputs(cfg, [20], [9], ta=20, tt=9))


def test_config_round_trips_and_rejects_nonsense():
    cfg = small_config(keep_rate=0.7, pooling="masked")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="audio_dim=10 must be a positive multiple of num_heads=4"):
        small_config(audio_dim=10)
    with pytest.raises(ValueError, match="keep_rate must be in"):
        small_config(keep_rate=0.0)
    with pytest.raises(ValueError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_gradients_reach_every_trainable_parameter_and_no_table():
    cfg = small_config()
    model = KSTransformer(cfg).train()
    audio, text, am, tm = padded_inputs(cfg, [37, 20, 9], [11, 6, 3])
    tables_before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_position")}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model(audio, text, am, tm), torch.tensor([0, 1, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        if name.endswith("_position"):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    for k, v in tables_before.items():
        assert torch.equal(model.state_dict()[k], v), k
    # encoders 1 + 1, each CCAB 2 (cross) + 1 (self) per direction, fusion 1 + 1
    assert len(tables_before) == 2 + 3 * 2 * cfg.num_layers[1] + 2


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_unimodal_models_use_one_modality_only(modality):
    cfg = small_config(modalities=modality)
    model = KSTransformer(cfg).double().eval()
    audio, text, am, tm = padded_inputs(cfg, [37, 9], [11, 4], dtype=torch.float64)
    x, mask = (audio, am) if modality == "audio" else (text, tm)
    with torch.no_grad():
        got = model(audio if modality == "audio" else None, text if modality == "text" else None, am, tm)
        encoder = model.audio_encoder if modality == "audio" else model.text_encoder
        fusion = model.audio_fusion if modality == "audio" else model.text_fusion
        want = model.classifier(fusion(encoder(x, key_padding_mask=mask)).mean(dim=1))
    torch.testing.assert_close(got, want)
    assert model.classifier[0].in_features == (cfg.audio_dim if modality == "audio" else cfg.text_dim)
    assert not any(k.startswith("audio_ccabs") or k.startswith("text_ccabs") for k in model.state_dict())
    with pytest.raises(ValueError, match=f"this {modality}-only model needs {modality} features"):
        model(None, None, am, tm)
