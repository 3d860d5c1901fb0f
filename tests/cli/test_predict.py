"""`ksr predict` on a shortened demo run: the demo pipeline end to end, then predictions that
must equal the model on the cache's own features, the attention figure, and the refusals."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.reference_forward import module_attention_weights

from ksr.cache import open_cache
from ksr.cli import main
from ksr.common import atomic_save
from ksr.demo import AUDIO_FRAMES as DEMO_AUDIO_FRAMES
from ksr.extract.corpora.demo import make_demo_corpus
from ksr.extract.corpora.manifest import read_manifest, write_manifest
from ksr.extract.pipeline import extract_corpus
from ksr.fuse import KSTransformer, load_checkpoint, load_model, save_checkpoint
from ksr.predict import PredictError, draw_attention, predict_one

SEED = 123  # the official recipe's seed: the demo's run folder is seed123
FOLD = 1  # tests Session 1


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo corpus of 40 utterances (4 per speaker), run through `ksr demo --epochs 1`."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_corpus(root / "data", seed=0, per_speaker=4)  # `ksr demo` reuses an existing corpus
    env = {"KSR_CACHE_DIR": str(root / "k")}  # the tiny encoders are built here
    args = [
        "demo",
        "--data",
        str(root / "data"),
        "--cache",
        str(root / "cache"),
        "--run",
        str(root / "run"),
        "--epochs",
        "1",
        "--no-compare",
        "--processes",
        "1",  # in this process: the test reads its output (tests/cli/test_demo_processes.py: two)
    ]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    return {
        "root": root,
        "env": env,
        "tiny": root / "k" / "tiny",
        "run": root / "run",
        "ckpt": root / "run" / f"seed{SEED}" / f"fold{FOLD}" / "best.pt",
        "manifest": read_manifest(root / "data" / "manifest.csv"),
        "output": result.output,
    }


@pytest.fixture(scope="module")
def utterance(demo):
    """A test utterance of fold 1 (Session 1)."""
    return next(u for u in demo["manifest"].rows if str(u.session) == "1")


@pytest.fixture(scope="module")
def prediction(demo, utterance):
    return predict_one(
        demo["ckpt"], utterance.audio, utterance.text, device="cpu", attention=True, tiny_root=demo["tiny"]
    )


def test_demo_pipeline_writes_report_and_records_cache_meta(demo):
    report = json.loads((demo["run"] / "report.json").read_text())
    for metric in ("wa", "ua"):
        assert 0.0 <= report["summary"][metric] <= 1.0
    cache = open_cache(demo["root"] / "cache", progress=False)
    assert len(cache) == 40
    for which in ("best", "last"):
        meta = load_checkpoint(demo["ckpt"].with_name(f"{which}.pt"))["meta"]
        assert meta["cache_meta"] == cache.meta.to_dict()  # what predict rebuilds features from


def test_demo_prints_the_cross_validation_report(demo):
    summary = json.loads((demo["run"] / "report.json").read_text())["summary"]
    out = demo["output"]
    assert "| 5 | Session 5 |" in out  # the per-fold table of the fused run
    probe = json.loads((demo["run"] / "baseline-probe" / "report.json").read_text())["summary"]
    row = (
        f"| fused | {100 * summary['ua']:.2f} ± {100 * summary['ua_std_over_folds']:.2f} | "
        f"{100 * probe['ua']:.2f} ± {100 * probe['ua_std_over_folds']:.2f} |"
    )
    assert row in out  # the model beside its linear probe, same folds
    ccc = json.loads((demo["run"] / "report.json").read_text())["attributes"]["systems"]
    ridge = ccc["ridge"]["summary"]
    assert f"| ridge (probe features) | {ridge['ccc']:.3f} ± {ridge['ccc_std_over_folds']:.3f} |" in out
    assert f"| KS-Transformer | {ccc['model']['summary']['ccc']:.3f} ± " in out


def test_prediction_is_a_distribution_over_the_cache_classes(demo, prediction):
    cache = open_cache(demo["root"] / "cache", progress=False)
    probs = np.array(list(prediction.probabilities.values()))
    assert list(prediction.probabilities) == list(cache.classes) == list(prediction.classes)
    assert abs(probs.sum() - 1.0) < 1e-6 and ((probs >= 0) & (probs <= 1)).all()
    assert prediction.label == cache.classes[int(np.argmax(probs))]
    assert prediction.label == cache.classes[int(np.argmax(prediction.logits))]
    assert prediction.encoders == {"audio": "tiny-audio@layer=2", "text": "tiny-text@layer=2"}


def test_logits_equal_the_model_on_the_cached_features(demo, utterance, prediction, tmp_path):
    model = load_model(demo["ckpt"])
    # The demo cache encoded the utterance in a batch with others: the same features up to one
    # float16 step where padding moved a float32 rounding; the logits agree to 1e-4.
    cache = open_cache(demo["root"] / "cache", progress=False)
    batch = cache.batch([cache.ids.index(utterance.id)])
    inputs = prediction.inputs
    assert (inputs.audio_len, inputs.text_len) == (batch.audio_lengths.item(), batch.text_lengths.item())
    assert torch.equal(inputs.audio_padding_mask, batch.audio_padding_mask)
    assert torch.equal(inputs.text_padding_mask, batch.text_padding_mask)
    torch.testing.assert_close(inputs.audio, batch.audio, rtol=2**-10, atol=1e-7)
    torch.testing.assert_close(inputs.text, batch.text, rtol=2**-10, atol=1e-7)
    with torch.no_grad():
        cached = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask)[0]
    # The demo's fused model learns classes and attributes (task both): the logits, then the values.
    torch.testing.assert_close(torch.from_numpy(prediction.logits), cached[:4], rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.tensor(list(prediction.attributes.values())), cached[4:], rtol=0, atol=1e-4)

    # Extracted alone (the same encoder call as predict's), the cache's row is predict's row
    # exactly: the same cut, padding and float16 round trip, hence the same logits bit for bit.
    one = write_manifest(tmp_path / "one" / "manifest.csv", [utterance])
    extract_corpus(
        one,
        tmp_path / "cache",
        "tiny-audio",
        "tiny-text",
        classes=cache.classes,
        corpus="demo",
        max_audio_len=DEMO_AUDIO_FRAMES,
        device="cpu",
        progress=False,
        tiny_root=demo["tiny"],
    )
    alone = open_cache(tmp_path / "cache", progress=False).batch([0])
    assert torch.equal(inputs.audio, alone.audio) and torch.equal(inputs.text, alone.text)
    with torch.no_grad():
        logits = model(alone.audio, alone.text, alone.audio_padding_mask, alone.text_padding_mask)[0]
    assert torch.equal(torch.from_numpy(prediction.logits), logits[:4])


def test_attention_maps_are_the_key_sparse_weights_without_padding(demo, prediction):
    maps = prediction.attention
    inputs = prediction.inputs
    la, lt = inputs.audio_len, inputs.text_len
    assert maps.text_to_audio.shape == (4, lt, la) and maps.audio_to_text.shape == (4, la, lt)
    assert len(maps.tokens) == lt and maps.tokens[0] == "<s>"
    np.testing.assert_allclose(maps.frame_times, np.arange(la) / 100.0)  # tiny-audio: 100 frames/s
    # Independent computation: the inputs of the last CCAB's cross attention, captured by hooks,
    # and its weights computed head by head by the test's own reference.
    model = load_model(demo["ckpt"])
    captured = {}
    last = model.cfg.num_layers[1] - 1
    for name, stack in (("to_audio", model.text_ccabs), ("to_text", model.audio_ccabs)):
        attention = stack.blocks[last].cross_block.layers[-1].attention
        attention.register_forward_hook(lambda m, args, out, name=name: captured.update({name: (m, args)}))
    with torch.no_grad():
        model(inputs.audio, inputs.text, inputs.audio_padding_mask, inputs.text_padding_mask)
    full = {
        name: module_attention_weights(m, args[0], args[1], args[3], model.cfg.keep_rate)[0]
        for name, (m, args) in captured.items()
    }
    full_to_audio, full_to_text = full["to_audio"], full["to_text"]
    np.testing.assert_allclose(maps.text_to_audio, full_to_audio[:, :lt, :la].numpy(), atol=1e-6)
    np.testing.assert_allclose(maps.audio_to_text, full_to_text[:, :la, :lt].numpy(), atol=1e-6)
    # Padded keys get nothing; key sparsity keeps int(S * 0.5) keys of the FULL length S
    # (padding included) and zeroes the others' columns exactly, so rows sum to at most 1.
    assert (full_to_audio[:, :, la:] == 0).all() and (full_to_text[:, :, lt:] == 0).all()
    for weights, keys in ((maps.text_to_audio, DEMO_AUDIO_FRAMES), (maps.audio_to_text, 20)):
        assert (weights.sum(-1) <= 1 + 1e-6).all()
        kept = (weights != 0).any(axis=1)  # (H, keys): columns anyone attends to
        assert (kept.sum(-1) <= int(keys * 0.5)).all()
        assert (kept.sum(-1) < weights.shape[-1]).all()  # something was dropped in every head


def test_cli_prints_json_and_draws_the_attention_png(demo, utterance, prediction, tmp_path):
    png = tmp_path / "attention.png"
    args = [
        "predict",
        "--checkpoint",
        str(demo["ckpt"]),
        "--audio",
        str(utterance.audio),
        "--text",
        utterance.text,
        "--device",
        "cpu",
        "--attention",
        str(png),
        "--json",
    ]
    result = CliRunner().invoke(main, args, env=demo["env"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["label"] == prediction.label and out["attention_png"] == str(png)
    np.testing.assert_allclose(list(out["probabilities"].values()), list(prediction.probabilities.values()))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    table = CliRunner().invoke(main, args[:-3], env=demo["env"])  # no --attention, no --json
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0] == f"label: {prediction.label}"
    shown = [float(line.split()[1]) for line in lines[1:5]]
    assert shown == sorted(shown, reverse=True) and len(shown) == 4
    # The demo's fused model learns the attributes too (task both): their three numbers follow.
    values = ", ".join(f"{k} {v:.2f}" for k, v in prediction.attributes.items())
    assert list(prediction.attributes) == ["activation", "valence", "dominance"]
    assert lines[5] == f"attributes: {values}" and out["attributes"] == prediction.attributes


def test_draw_attention_needs_maps(prediction, tmp_path):
    draw_attention(prediction, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    prediction_without = type(prediction)(**{**prediction.__dict__, "attention": None})
    with pytest.raises(PredictError, match=r"no attention maps: call predict_one\(\.\.\., attention=True\)"):
        draw_attention(prediction_without, tmp_path / "b.png")


# --- refusals and fallbacks ----------------------------------------------------------------------


NEEDS_TEXT = (
    "this fused (audio + text) model needs the utterance's transcript: give it with --text, or name an ASR model with --asr "
    "to transcribe the audio"
)


def test_fused_model_needs_text_or_asr(demo, utterance):
    with pytest.raises(PredictError, match=rf"best\.pt: {re.escape(NEEDS_TEXT)}$"):
        predict_one(demo["ckpt"], utterance.audio, None, device="cpu", tiny_root=demo["tiny"])
    result = CliRunner().invoke(
        main, ["predict", "--checkpoint", str(demo["ckpt"]), "--audio", str(utterance.audio)], env=demo["env"]
    )
    assert result.exit_code == 1
    assert result.output == f"Error: {demo['ckpt']}: {NEEDS_TEXT}\n"


@pytest.fixture(scope="module")
def asr_folder(tmp_path_factory):
    from ksr.extract.encoders.tiny import save_tiny_whisper

    return save_tiny_whisper(tmp_path_factory.mktemp("asr") / "tiny-whisper-asr", asr=True)


def test_asr_transcribes_the_audio_when_no_text_is_given(demo, utterance, asr_folder):
    from ksr.extract.asr.recognizer import load_asr
    from ksr.extract.audio import read_audio

    heard = load_asr(f"hf:{asr_folder}", device="cpu").transcribe([read_audio(utterance.audio)])[0]
    assert heard and heard != utterance.text
    result = predict_one(
        demo["ckpt"], utterance.audio, None, device="cpu", tiny_root=demo["tiny"], asr=f"hf:{asr_folder}"
    )
    given = predict_one(demo["ckpt"], utterance.audio, heard, device="cpu", tiny_root=demo["tiny"])
    assert result.transcript == heard and np.array_equal(result.logits, given.logits)
    assert result.asr["name"] == "hf:tiny-whisper-asr" and result.asr["checkpoint_digest"].startswith("sha256:")
    args = ["predict", "--checkpoint", str(demo["ckpt"]), "--audio", str(utterance.audio), "--asr", f"hf:{asr_folder}"]
    out = CliRunner().invoke(main, [*args, "--device", "cpu"], env=demo["env"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[:2] == [f"transcript (hf:tiny-whisper-asr): {heard}", f"label: {given.label}"]
    as_json = json.loads(CliRunner().invoke(main, [*args, "--json"], env=demo["env"]).output)
    assert as_json["transcript"] == heard and as_json["asr"]["model_type"] == "whisper"
    # A transcript given with --text wins; the ASR is not used.
    typed = predict_one(demo["ckpt"], utterance.audio, "hello", device="cpu", tiny_root=demo["tiny"], asr="hf:/nope")
    assert typed.transcript == "hello" and typed.asr is None


def test_asr_needs_audio_and_a_loadable_model(demo, utterance, tmp_path):
    raw = load_checkpoint(demo["ckpt"])
    torch.manual_seed(0)
    text_only = KSTransformer(load_model(demo["ckpt"]).cfg.replace(modalities="text"))
    path = save_checkpoint(tmp_path / "text-only.pt", text_only, raw["meta"])
    with pytest.raises(PredictError, match=r"^--asr transcribes the utterance's audio: give it with --audio"):
        predict_one(path, None, None, device="cpu", tiny_root=demo["tiny"], asr="hf:/nope")
    with pytest.raises(PredictError, match=r"^--asr: ASR hf:/nope: model folder not found: /nope$"):
        predict_one(path, utterance.audio, None, device="cpu", tiny_root=demo["tiny"], asr="hf:/nope")


def test_missing_audio_file(demo, tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(PredictError, match=rf"^--audio: audio file not found: {missing}$"):
        predict_one(demo["ckpt"], missing, "hello", device="cpu", tiny_root=demo["tiny"])


def test_bad_device_and_unwritable_figure_are_one_line(demo, utterance, tmp_path):
    base = ["predict", "--checkpoint", str(demo["ckpt"]), "--audio", str(utterance.audio), "--text", utterance.text]
    result = CliRunner().invoke(main, [*base, "--device", "gpu"], env=demo["env"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --device gpu: not a device; use auto, cpu, cuda or cuda:N"
    (tmp_path / "a-file").write_text("")
    png = tmp_path / "a-file" / "a.png"  # a folder that cannot be made
    result = CliRunner().invoke(main, [*base, "--device", "cpu", "--attention", str(png)], env=demo["env"])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"Error: cannot write {png}: ")
    assert len(result.output.strip().splitlines()) == 1


def without_cache_meta(ckpt_path: Path, out: Path) -> Path:
    """The checkpoint as an older ksr wrote it: no cache_meta in its meta."""
    raw = torch.load(ckpt_path, weights_only=True)
    raw["meta"] = {k: v for k, v in raw["meta"].items() if k != "cache_meta"}
    return atomic_save(raw, out)


def test_checkpoint_without_cache_meta_or_run_json(demo, utterance, tmp_path):
    old = without_cache_meta(demo["ckpt"], tmp_path / "old.pt")
    with pytest.raises(
        PredictError,
        match=r"old\.pt: the checkpoint records no cache metadata .* no run\.json two "
        r"folders above its fold folder; use a checkpoint written by "
        r"`ksr train`$",
    ):
        predict_one(old, utterance.audio, utterance.text, device="cpu", tiny_root=demo["tiny"])


def test_older_checkpoint_falls_back_to_run_json(demo, utterance, prediction, tmp_path):
    run = tmp_path / "run"
    old = without_cache_meta(demo["ckpt"], run / "seed1" / "fold1" / "best.pt")
    shutil.copy(demo["run"] / "run.json", run / "run.json")
    again = predict_one(old, utterance.audio, utterance.text, device="cpu", tiny_root=demo["tiny"])
    assert np.array_equal(again.logits, prediction.logits)


def test_encoder_digest_mismatch_is_refused_unless_forced(demo, utterance, prediction, tmp_path):
    raw = load_checkpoint(demo["ckpt"])
    model = load_model(demo["ckpt"])
    meta = raw["meta"]["cache_meta"]
    real = meta["audio_encoder"]["checkpoint_digest"]
    fake = "sha256:" + "0" * 64
    meta["audio_encoder"]["checkpoint_digest"] = fake
    path = save_checkpoint(tmp_path / "other.pt", model, raw["meta"])
    with pytest.raises(PredictError) as info:
        predict_one(path, utterance.audio, utterance.text, device="cpu", tiny_root=demo["tiny"])
    assert str(info.value) == (
        f"audio encoder tiny-audio@layer=2 (weights {real}, layer 2) is not the one the checkpoint was trained "
        f"with (tiny-audio, weights {fake}, layer 2); pass that encoder with --audio-encoder, or --force to "
        f"predict anyway"
    )
    forced = predict_one(path, utterance.audio, utterance.text, device="cpu", force=True, tiny_root=demo["tiny"])
    assert np.array_equal(forced.logits, prediction.logits)


def test_audio_only_model_needs_no_text(demo, utterance):
    raw = load_checkpoint(demo["ckpt"])
    torch.manual_seed(0)
    audio_only = KSTransformer(load_model(demo["ckpt"]).cfg.replace(modalities="audio"))
    path = save_checkpoint(demo["root"] / "audio-only.pt", audio_only, raw["meta"])
    result = predict_one(path, utterance.audio, None, device="cpu", tiny_root=demo["tiny"])
    assert abs(sum(result.probabilities.values()) - 1) < 1e-6 and result.encoders == {"audio": "tiny-audio@layer=2"}
    assert result.inputs.text is None and result.inputs.tokens == []
    with pytest.raises(
        PredictError, match=r"^--attention: this audio-only model has no cross-modal attention to draw$"
    ):
        predict_one(path, utterance.audio, None, device="cpu", attention=True, tiny_root=demo["tiny"])


def test_tokens_read_as_words_in_the_figure():
    from ksr.predict import readable_token

    assert [readable_token(t) for t in ["\u0120phone", "\u0120", "<s>", "\u2581was", "af"]] == [
        "phone",
        "\u2423",
        "<s>",
        "was",
        "af",
    ]


def test_text_that_is_not_utf8_is_one_line(demo, utterance):
    # A Latin-1 byte in a UTF-8 command line reaches Python as a lone surrogate (surrogateescape).
    with pytest.raises(PredictError, match=r"^--text is not valid UTF-8 \(character 4 is the byte 0xe9\)"):
        predict_one(demo["ckpt"], utterance.audio, "caf\udce9 au lait", device="cpu", tiny_root=demo["tiny"])


def test_attention_figure_format_follows_the_suffix(demo, utterance, tmp_path):
    base = ["predict", "--checkpoint", str(demo["ckpt"]), "--audio", str(utterance.audio), "--text", utterance.text]
    bad = tmp_path / "att.xyz"
    result = CliRunner().invoke(main, [*base, "--device", "cpu", "--attention", str(bad)], env=demo["env"])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {bad}: a figure is written as png, pdf, svg (by its suffix), not 'xyz'"
    assert not bad.exists()
    svg = tmp_path / "att.svg"
    result = CliRunner().invoke(main, [*base, "--device", "cpu", "--attention", str(svg)], env=demo["env"])
    assert result.exit_code == 0, result.output
    assert b"<svg" in svg.read_bytes()[:2000]


def test_duration_guard_is_an_option_of_predict(demo, utterance):
    seconds = len(read_manifest_audio(utterance)) / 16000
    limit = round(seconds / 2, 3)
    with pytest.raises(
        PredictError, match=rf"more than the {limit:g} s one file may decode to \(--max-duration raises"
    ):
        predict_one(
            demo["ckpt"], utterance.audio, utterance.text, device="cpu", tiny_root=demo["tiny"], max_duration=limit
        )
    base = ["predict", "--checkpoint", str(demo["ckpt"]), "--audio", str(utterance.audio), "--text", utterance.text]
    result = CliRunner().invoke(main, [*base, "--device", "cpu", "--max-duration", str(limit)], env=demo["env"])
    assert result.exit_code == 1 and "(--max-duration raises the limit)" in result.output
    result = CliRunner().invoke(main, [*base, "--device", "cpu", "--max-duration", "inf"], env=demo["env"])
    assert result.exit_code == 0, result.output


def read_manifest_audio(utterance) -> np.ndarray:
    import soundfile as sf

    samples, rate = sf.read(utterance.audio, dtype="float32")
    assert rate == 16000
    return samples


def test_a_speaker_normalised_model_uses_the_utterances_own_statistics_and_says_so(
    demo, utterance, prediction, tmp_path
):
    from ksr.fuse.train.checkpoint import load_model_and_meta

    model, meta = load_model_and_meta(demo["ckpt"], torch.device("cpu"))
    model.cfg = model.cfg.replace(speaker_norm="speaker")
    save_checkpoint(tmp_path / "spk.pt", model, meta)
    got = predict_one(tmp_path / "spk.pt", utterance.audio, utterance.text, device="cpu", tiny_root=demo["tiny"])
    n = prediction.inputs.audio_len  # the same utterance, its features as the cache stores them
    x = prediction.inputs.audio[0, :n].double()
    want = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-8)
    torch.testing.assert_close(got.inputs.audio[0, :n].double(), want, rtol=1e-5, atol=1e-5)
    assert not got.inputs.audio[0, n:].any()
    with torch.no_grad():
        logits = model(got.inputs.audio, got.inputs.text, got.inputs.audio_padding_mask, got.inputs.text_padding_mask)
    assert torch.equal(torch.from_numpy(got.logits), logits[0, :4])  # the demo's model: 4 logits, 3 attributes
    assert "this utterance's own statistics" in got.normalisation and prediction.normalisation is None
    out = CliRunner().invoke(
        main,
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "spk.pt"),
            "--audio",
            str(utterance.audio),
            "--text",
            utterance.text,
        ],
        env=demo["env"],
    )
    assert out.exit_code == 0, out.output
    assert "normalisation: audio standardised with this utterance's own statistics" in out.output
