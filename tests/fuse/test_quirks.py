"""Every quirk of the public implementation, pinned.

Each test fails if the default model stops reproducing the quirk; where an option departs from
it, the test also checks that the option changes the logits exactly as the plain reference does
with that quirk switched, so a "fix" cannot pass unnoticed.
"""

from __future__ import annotations

import pytest
import torch
from support import reference_forward
from support.model_inputs import padded_inputs, small_config

from ksr.fuse import KSTransformer, to_official_state_dict
from ksr.fuse.model import positions
from ksr.fuse.model.attention import MultiheadAttention


def option_and_references(option, reference_changes, seed=0):
    """Logits of the default model, of the same weights under ``option``, and of the reference
    with and without the matching quirk switched."""
    cfg = small_config()
    default = KSTransformer(cfg).double().eval()
    departed = KSTransformer(cfg.replace(**option)).double().eval()
    departed.load_state_dict(default.state_dict())
    audio, text, am, tm = padded_inputs(cfg, [37, 19, 6], [11, 5, 2], seed=seed, dtype=torch.float64)
    with torch.no_grad():
        got_default, got_option = default(audio, text, am, tm), departed(audio, text, am, tm)
    sd = {k: v.double() for k, v in to_official_state_dict(default).items()}
    faithful = reference_forward.forward(sd, audio, text, am, tm, heads=cfg.num_heads, keep_rate=cfg.keep_rate)
    changed = reference_forward.forward(
        sd, audio, text, am, tm, heads=cfg.num_heads, keep_rate=cfg.keep_rate, **reference_changes
    )
    return got_default, got_option, faithful, changed


@pytest.mark.parametrize(
    "option, reference_change",
    [
        ({"pooling": "masked"}, {"masked_pooling": True}),
        ({"mask_fusion": True}, {"mask_fusion": True}),
        ({"mask_interaction_self": True}, {"mask_ccab_self": True}),
        ({"ccab_residual": "single"}, {"double_residual": False}),
        ({"ks_renormalise": True}, {"renormalise": True}),
    ],
    ids=[
        "POOLING_OVER_PADDING",
        "MASKS_ONLY_WHERE_USED-fusion",
        "MASKS_ONLY_WHERE_USED-ccab-self",
        "DOUBLE_CCAB_RESIDUAL",
        "KS_NO_RENORMALISATION",
    ],
)
def test_each_option_departs_from_the_faithful_default(option, reference_change):
    default_got, option_got, faithful, changed = option_and_references(option, reference_change)
    # the quirk matters (the reference moves) ...
    assert (faithful - changed).abs().max() > 1e-6
    # ... the default reproduces it, and the option departs exactly as documented
    torch.testing.assert_close(default_got, faithful, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(option_got, changed, rtol=1e-9, atol=1e-10)


def test_positional_tables_are_fixed_xavier_random_matrices():
    cfg = small_config(max_positions=2000)
    model = KSTransformer(cfg)
    tables = {k: v for k, v in model.named_parameters() if k.endswith("_position")}
    assert tables and all(not t.requires_grad for t in tables.values())
    for name, t in tables.items():
        bound = positions.xavier_bound(*t.shape)
        assert t.abs().max() <= bound, name
        # uniform on [-bound, bound]: std = bound / sqrt(3)
        assert abs(t.std().item() - bound / 3**0.5) < 0.02 * bound, name
        assert (t - positions.sinusoidal_table(*t.shape)).abs().max() > 0.5, name
    # all tables differ from each other (each block draws its own)
    flat = [t.flatten()[:100] for t in tables.values() if t.shape[1] == cfg.audio_dim]
    assert all(not torch.equal(a, b) for i, a in enumerate(flat) for b in flat[i + 1 :])


def test_sinusoidal_option_keeps_the_textbook_table():
    model = KSTransformer(small_config(positional_table="sinusoidal"))
    table = model.audio_encoder.query_position
    assert torch.equal(table, positions.sinusoidal_table(*table.shape))
    assert table[3, 0].item() == pytest.approx(torch.sin(torch.tensor(3.0)).item(), abs=1e-6)
    assert table[3, 1].item() == pytest.approx(torch.cos(torch.tensor(3.0)).item(), abs=1e-6)


def test_positions_are_added_in_every_layer_to_the_attention_input_only():
    cfg = small_config(num_layers=(3, 1, 1))
    model = KSTransformer(cfg).double().eval()
    block = model.audio_encoder
    seen = {}

    def remember(name):
        def hook(module, args, kwargs):
            seen[name] = args[0].clone()  # the attention's query input

        return hook

    for i, layer in enumerate(block.layers):
        layer.attention.register_forward_pre_hook(remember(i), with_kwargs=True)
    outputs = []
    for layer in block.layers:
        layer.register_forward_hook(lambda m, a, out: outputs.append(out.clone()))
    audio, text, am, tm = padded_inputs(cfg, [37, 9], [11, 4], dtype=torch.float64)
    with torch.no_grad():
        model(audio, text, am, tm)
    table = block.query_position[:37]
    first_input = block.query_input_norm(audio)
    torch.testing.assert_close(seen[0], first_input + table)
    torch.testing.assert_close(seen[1], outputs[0] + table)  # re-added to layer 1's input
    torch.testing.assert_close(seen[2], outputs[1] + table)


def test_cross_values_carry_no_table():
    cfg = small_config()
    model = KSTransformer(cfg).double().eval()
    cross = model.audio_ccabs.blocks[0].cross_block
    seen = {}
    cross.layers[0].attention.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(key=args[1].clone(), value=args[2].clone()), with_kwargs=True
    )
    text_seen = {}
    model.text_encoder.register_forward_hook(lambda m, a, out: text_seen.update(out=out.clone()))
    audio, text, am, tm = padded_inputs(cfg, [37, 9], [11, 4], dtype=torch.float64)
    with torch.no_grad():
        model(audio, text, am, tm)
    normed = cross.key_input_norm(text_seen["out"])
    torch.testing.assert_close(seen["value"], normed)
    torch.testing.assert_close(seen["key"], normed + cross.key_position[:11])


def test_masks_go_only_where_the_public_code_puts_them():
    cfg = small_config(num_layers=(1, 1, 1))
    model = KSTransformer(cfg).eval()
    got = {}
    for name, module in model.named_modules():
        if isinstance(module, MultiheadAttention):
            module.register_forward_pre_hook(
                lambda m, args, kwargs, name=name: got.update(
                    {name: args[3] if len(args) > 3 else kwargs.get("key_padding_mask")}
                ),
                with_kwargs=True,
            )
    audio, text, am, tm = padded_inputs(cfg, [37, 9], [11, 4])
    with torch.no_grad():
        model(audio, text, am, tm)
    a = "layers.0.attention"
    assert got[f"audio_encoder.{a}"] is am and got[f"text_encoder.{a}"] is tm
    assert got[f"audio_ccabs.blocks.0.cross_block.{a}"] is tm  # the OTHER modality's mask
    assert got[f"text_ccabs.blocks.0.cross_block.{a}"] is am
    for name in ("audio_ccabs.blocks.0.self_block", "text_ccabs.blocks.0.self_block", "audio_fusion", "text_fusion"):
        assert got[f"{name}.{a}"] is None, name


def test_double_ccab_residual_makes_three_times_the_unimodal_output_without_ccabs():
    cfg = small_config(num_layers=(1, 0, 1))
    model = KSTransformer(cfg).double().eval()
    seen = {}
    model.audio_encoder.register_forward_hook(lambda m, a, out: seen.update(enc=out.clone()))
    model.audio_fusion.register_forward_pre_hook(lambda m, args: seen.update(fusion_in=args[0].clone()))
    with torch.no_grad():
        model(*padded_inputs(cfg, [37, 9], [11, 4], dtype=torch.float64))
    torch.testing.assert_close(seen["fusion_in"], 3 * seen["enc"])


def test_pooling_averages_over_padding_too():
    cfg = small_config()
    model = KSTransformer(cfg).double().eval()
    seen = {}
    model.audio_fusion.register_forward_hook(lambda m, a, out: seen.update(a=out.clone()))
    model.text_fusion.register_forward_hook(lambda m, a, out: seen.update(t=out.clone()))
    model.classifier.register_forward_pre_hook(lambda m, args: seen.update(pooled=args[0].clone()))
    with torch.no_grad():
        model(*padded_inputs(cfg, [37, 3], [11, 2], dtype=torch.float64))
    want = torch.cat([seen["a"].sum(1) / 37, seen["t"].sum(1) / 11], dim=-1)
    torch.testing.assert_close(seen["pooled"], want)


def test_same_seed_same_initial_weights():
    torch.manual_seed(11)
    a = KSTransformer(small_config()).state_dict()
    torch.manual_seed(11)
    b = KSTransformer(small_config()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
