"""ksr export --onnx: onnxruntime computes the checkpoint's logits; metadata; one-line refusals."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from support.cli_runner import invoke_ksr
from support.tiny import TINY_SETTINGS

from ksr.cache import padding_mask, stored_row
from ksr.cache.synthetic import synthetic_meta
from ksr.fuse import ModelConfig, load_model, save_checkpoint
from ksr.fuse.model.architectures import build_model
from ksr.fuse.model.config import DEPARTURES
from ksr.fuse.report.export import ExportError, export_onnx, read_metadata, write_onnx

# tests/support/tiny.py's model (layers 1,1,1, 2 heads, FFN 8) on small feature dims
CLASSES = ("ang", "neu", "hap", "sad")


def write_checkpoint(path, cfg: ModelConfig, max_audio_len=460, max_text_len=20, seed=0):
    """A checkpoint as ksr train writes it (random weights, the cache's metadata recorded)."""
    meta = synthetic_meta(
        audio_dim=cfg.audio_dim, text_dim=cfg.text_dim, max_audio_len=max_audio_len, max_text_len=max_text_len
    )
    torch.manual_seed(seed)
    model = build_model(cfg.replace(num_classes=len(meta.classes)))
    g = torch.Generator().manual_seed(seed + 1)
    for name, buffer in model.named_buffers():  # standardizers and probes: statistics that are not 0 and 1
        buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5 if "std" in name or "scale" in name else buffer)
        if name.endswith("mean"):
            buffer.copy_(torch.randn(buffer.shape, generator=g))
    save_checkpoint(path, model, {"fold": 5, "seed": 123, "epoch": 7, "cache_meta": meta.to_dict()})
    return meta


def padded(batch_lengths, length, dim, seed):
    """Features (B, length, dim) with the given true lengths, zeros after them, and their masks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(batch_lengths), length, dim, generator=g)
    mask = torch.arange(length)[None, :] >= torch.tensor(batch_lengths)[:, None]
    return x.masked_fill(mask[..., None], 0.0), mask


def feeds(cfg: ModelConfig, audio_lengths, text_lengths, ta, tt, seed=0):
    audio, audio_mask = padded(audio_lengths, ta, cfg.audio_dim, seed)
    text, text_mask = padded(text_lengths, tt, cfg.text_dim, seed + 1)
    return {"audio": audio, "text": text, "audio_padding_mask": audio_mask, "text_padding_mask": text_mask}


def assert_same_logits(onnx_path, model, cfg, ta, tt):
    """onnxruntime on the file against the torch model (its default fast attention), batches of
    1 and 3 with varied true lengths."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for audio_lengths, text_lengths in (([ta // 3], [tt // 2]), ([ta, 1, ta - 7], [2, tt, 1])):
        inputs = feeds(cfg, audio_lengths, text_lengths, ta, tt, seed=len(audio_lengths))
        with torch.no_grad():
            want = model(**inputs).numpy()
        got = session.run(["logits"], {n: inputs[n].numpy() for n in names})[0]
        assert got.shape == want.shape == (len(audio_lengths), cfg.num_classes)
        assert np.abs(got - want).max() <= 1e-4, (audio_lengths, np.abs(got - want).max())
        assert np.abs(want).max() > 1e-3  # the comparison compares something


SMALL = {
    "public": (ModelConfig(audio_dim=16, text_dim=24, **TINY_SETTINGS), 460, 20),
    # every departure at once (masks in CCAB self and fusion, renormalised KS, masked pooling,
    # standardised inputs, ...), on a cache of other lengths (as the demo's 230 frames)
    "departures": (ModelConfig(audio_dim=16, text_dim=24, **TINY_SETTINGS, **DEPARTURES["all"]), 230, 12),
    "audio-only": (ModelConfig(audio_dim=16, text_dim=24, modalities="audio", **TINY_SETTINGS), 460, 20),
    "text-only": (ModelConfig(audio_dim=16, text_dim=24, modalities="text", **TINY_SETTINGS), 460, 20),
    "head": (ModelConfig(audio_dim=16, text_dim=24, architecture="head", head_dim=8), 460, 20),
    "probe": (ModelConfig(audio_dim=16, text_dim=24, architecture="probe"), 460, 20),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_small_models_match_torch(name, tmp_path):
    cfg, ta, tt = SMALL[name]
    write_checkpoint(tmp_path / "m.pt", cfg, ta, tt)
    result = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    expected = {"both": ["audio", "text"], "audio": ["audio"], "text": ["text"]}[cfg.modalities]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert [i.name for i in session.get_inputs()] == expected + [f"{m}_padding_mask" for m in expected]
    if "audio" in expected:
        assert shapes["audio"] == ("tensor(float)", ["batch", ta, 16])
        assert shapes["audio_padding_mask"] == ("tensor(bool)", ["batch", ta])
    if "text" in expected:
        assert shapes["text"] == ("tensor(float)", ["batch", tt, 24])
    assert_same_logits(tmp_path / "m.onnx", load_model(tmp_path / "m.pt"), cfg.replace(num_classes=4), ta, tt)


def test_default_model_matches_torch(tmp_path):
    """The paper's size (ModelConfig defaults: 512/1024 dims, layers 5,3,2, 8 heads), 460 / 20."""
    cfg = ModelConfig()
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # in memory: writing and reading its 450 MB checkpoint takes seconds
    write_onnx(model, synthetic_meta(), tmp_path / "m.onnx", {"file": "in memory"})
    assert_same_logits(tmp_path / "m.onnx", model, cfg, 460, 20)


def test_metadata_round_trip(tmp_path):
    cfg = SMALL["public"][0]
    meta = write_checkpoint(tmp_path / "m.pt", cfg, 460, 20)
    export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", check=False)
    got = read_metadata(tmp_path / "m.onnx")
    assert got["ksr.classes"] == list(CLASSES) == list(meta.classes)
    assert got["ksr.cache_meta"] == json.loads(json.dumps(meta.to_dict()))
    assert got["ksr.cache_meta"]["audio_encoder"]["name"] == "synthetic-audio"
    assert ModelConfig.from_dict(got["ksr.model_config"]) == load_model(tmp_path / "m.pt").cfg
    assert got["ksr.checkpoint"] == {"file": "m.pt", "fold": 5, "seed": 123, "epoch": 7}
    assert got["ksr.inputs"][0] == ["audio", "float32", ["batch", 460, 16]]
    assert got["ksr.padding_mask"].startswith("True = padded")
    # onnxruntime alone (no onnx package) reads the same strings
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["ksr.classes"]) == list(CLASSES)
    assert json.loads(props["ksr.cache_meta"]) == got["ksr.cache_meta"]


def test_cli_writes_checks_and_refuses_in_one_line(tmp_path, monkeypatch):
    cfg = SMALL["public"][0]
    write_checkpoint(tmp_path / "m.pt", cfg)
    ok = invoke_ksr(["export", "m.pt", "--onnx", "m.onnx"], tmp_path)
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("wrote m.onnx (") and "audio float32 (batch, 460, 16)" in ok.output
    assert "max |logit difference|" in ok.output
    written = (tmp_path / "m.onnx").read_bytes()

    def refused(args, message):
        result = invoke_ksr(args, tmp_path)
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [f"Error: {message}"]

    refused(["export", "missing.pt", "--onnx", "x.onnx"], "missing.pt: no such file")
    refused(["export", "m.pt", "--onnx", "m.onnx"], "m.onnx exists; pass --force to replace it")
    assert (tmp_path / "m.onnx").read_bytes() == written
    refused(["export", "m.pt", "--onnx", "no/such/m.onnx"], "no/such: no such folder")
    torch.save(
        {"format": "ksr-checkpoint", **torch.load(tmp_path / "m.pt", weights_only=True), "meta": {}},
        tmp_path / "bare.pt",
    )
    refused(
        ["export", "bare.pt", "--onnx", "bare.onnx"],
        "bare.pt: the checkpoint records no cache metadata (encoders, classes, max lengths) and there is no "
        "run.json two folders above its fold folder; use a checkpoint written by `ksr train`",
    )
    forced = invoke_ksr(["export", "m.pt", "--onnx", "m.onnx", "--force", "--no-check"], tmp_path)
    assert forced.exit_code == 0 and "max |logit" not in forced.output
    checkpoint = (tmp_path / "m.pt").read_bytes()
    refused(
        ["export", "m.pt", "--onnx", "m.pt", "--force"],
        "m.pt is the checkpoint this command reads; write to another file",
    )
    refused(
        ["export", "m.pt", "--onnx", "./m.pt", "--force"],
        "m.pt is the checkpoint this command reads; write to another file",
    )
    assert (tmp_path / "m.pt").read_bytes() == checkpoint
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails
    refused(
        ["export", "m.pt", "--onnx", "other.onnx"],
        "ksr export needs the package onnx, which is not installed: pip install 'ksr[export]' (or pip install onnx)",
    )
    assert not (tmp_path / "other.onnx").exists() and not (tmp_path / "bare.onnx").exists()


def test_export_error_is_a_ksr_error():
    from ksr.common import KsrError

    assert issubclass(ExportError, KsrError)


def test_docs_snippet_runs_without_ksr(tmp_path, monkeypatch, capsys):
    """docs/export.md's onnxruntime example: the cache's rows and masks, the model's logits."""
    docs = (Path(__file__).resolve().parents[2] / "docs/export.md").read_text()
    block = re.search(r"```python\n(.*?)```", docs, re.S).group(1)
    assert "ksr" not in re.findall(r"^(?:import|from) (\w+)", block, re.M)
    cfg = SMALL["public"][0]
    meta = write_checkpoint(tmp_path / "m.pt", cfg)
    assert meta.dtype == "float16"  # the snippet must round as such a cache does
    export_onnx(tmp_path / "m.pt", tmp_path / "model.onnx", check=False)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block, "docs/export.md", "exec"), ns)
    assert capsys.readouterr().out.split(" ", 1)[0] in CLASSES
    feeds = ns["model_inputs"](ns["audio"], ns["text"])
    for name, length in (("audio", meta.max_audio_len), ("text", meta.max_text_len)):
        row, n = stored_row(torch.from_numpy(ns[name]), length, meta.dtype)
        assert np.array_equal(feeds[name][0], row.numpy()), name
        assert np.array_equal(feeds[f"{name}_padding_mask"][0], padding_mask(torch.tensor([n]), length)[0].numpy())
    with torch.no_grad():
        want = load_model(tmp_path / "m.pt")(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    assert np.abs(ns["logits"] - want).max() <= 1e-4


def test_a_model_that_learns_attributes_has_an_attributes_output(tmp_path):
    """--task both: outputs logits and attributes, each what torch computes; the names in the metadata."""
    names = ("activation", "valence", "dominance")
    cfg = ModelConfig(audio_dim=16, text_dim=24, task="both", attributes=names, **TINY_SETTINGS)
    write_checkpoint(tmp_path / "m.pt", cfg, 40, 8)
    result = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert read_metadata(tmp_path / "m.onnx")["ksr.attributes"] == list(names)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "attributes"]
    model = load_model(tmp_path / "m.pt")
    inputs = feeds(cfg, [40, 5], [3, 8], 40, 8)
    logits, values = session.run(["logits", "attributes"], {n: x.numpy() for n, x in inputs.items()})
    with torch.no_grad():
        want = model(**inputs).numpy()
    assert logits.shape == (2, 4) and values.shape == (2, 3)
    assert np.abs(np.concatenate([logits, values], axis=-1) - want).max() <= 1e-4
