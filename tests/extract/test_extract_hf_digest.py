"""The digest of an ``hf:`` encoder covers the files fetched after the weights.

From the hub, ``from_pretrained`` fetches the config and the weights, and the feature extractor
or tokenizer fetches its own files afterwards. A digest taken before those arrive differs from
the one a second run takes (all files present), and the cache would refuse to be continued.
Simulated offline: the processor's files are moved into the folder only when the processor is
loaded, as a first hub download does.
"""

from __future__ import annotations

import shutil

import pytest

from ksr.extract.encoders import load_encoder
from ksr.extract.encoders.hf import checkpoint_digest
from ksr.extract.encoders.tiny import ensure_tiny


@pytest.mark.parametrize(
    "name, files, loader",
    [
        ("tiny-audio", ["preprocessor_config.json"], "AutoFeatureExtractor"),
        (
            "tiny-text",
            ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"],
            "AutoTokenizer",
        ),
    ],
)
def test_first_load_digest_equals_later_ones(name, files, loader, tmp_path, monkeypatch):
    import transformers

    built = ensure_tiny(name, tmp_path / "tiny")
    folder, aside = tmp_path / "model", tmp_path / "aside"
    shutil.copytree(built, folder)
    aside.mkdir()
    moved = [f for f in files if (folder / f).is_file()]
    assert moved
    for f in moved:
        shutil.move(folder / f, aside / f)
    cls = getattr(transformers, loader)
    original = cls.from_pretrained.__func__

    def fetch_then_load(klass, *args, **kwargs):
        for f in moved:  # "downloaded" now, after the weights
            if (aside / f).is_file():
                shutil.move(aside / f, folder / f)
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(fetch_then_load))
    first = load_encoder(f"hf:{folder}", device="cpu")
    monkeypatch.undo()
    assert all((folder / f).is_file() for f in moved)
    assert first.digest == checkpoint_digest(folder) == load_encoder(f"hf:{folder}", device="cpu").digest
