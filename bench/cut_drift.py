"""How far ``--max-audio-seconds`` moves the frames the cache keeps, per encoder kind.

For each encoder: long "turns" of generated speech (the demo corpus's voice, one speaker's
utterances joined into 20 s), encoded whole and cut to ``c`` seconds; the frames the cache
would keep from the cut audio (the first ``min(460, frames of c seconds)``) are compared with the
same frames of the whole turn. Printed: max and mean absolute difference, and the mean absolute
feature value for scale (a markdown table, for docs/encoders.md).

Encoders have random weights (nothing is downloaded), built like the tests build them: the
differences show which computations let later audio reach earlier frames (utterance-wide
norms, attention both ways, Whisper's padded window), not the size they have with released
weights. ``fbank`` must show exactly 0.

    OMP_NUM_THREADS=1 .venv/bin/python bench/cut_drift.py [--turns 6] [--cuts 5,10] [--only e2v]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

KEEP = 460  # frames the cache keeps
TURN_SECONDS = 20.0


def speech_turns(folder: Path, turns: int, seconds: float = TURN_SECONDS) -> list[np.ndarray]:
    """``turns`` waveforms of ``seconds`` each: the demo corpus's utterances of one speaker
    joined (with 0.2 s pauses) until long enough."""
    from ksr.extract.audio import read_audio
    from ksr.extract.corpora.demo import make_demo_corpus
    from ksr.extract.corpora.manifest import read_manifest

    manifest = read_manifest(make_demo_corpus(folder / "demo", seed=1, per_speaker=16))
    by_speaker: dict[str, list[np.ndarray]] = {}
    for u in manifest.rows:
        by_speaker.setdefault(u.speaker, []).append(read_audio(u.audio))
    out = []
    for speaker in sorted(by_speaker):
        pieces, n = [], 0
        for wav in by_speaker[speaker]:
            pieces += [wav, np.zeros(3200, np.float32)]
            n += len(wav) + 3200
            if n >= seconds * 16000:
                break
        out.append(np.concatenate(pieces)[: int(seconds * 16000)])
        if len(out) == turns:
            break
    return out


def write_wav2vec1_large(path: Path) -> str:
    """fairseq wav2vec 1.0 with the large settings (the paper's) and random weights."""
    import argparse as ap

    from ksr.extract.encoders.wav2vec1 import Wav2Vec1, Wav2Vec1Config, to_fairseq_keys

    features = "[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1)]"
    aggregator = "[" + ", ".join(f"(512, {k}, 1)" for k in range(2, 14)) + "]"
    args = ap.Namespace(
        arch="wav2vec",
        conv_feature_layers=features,
        conv_aggregator_layers=aggregator,
        aggregator="cnn",
        log_compression=True,
        skip_connections_feat=False,
        skip_connections_agg=True,
        residual_scale=0.5,
        agg_zero_pad=False,
        no_conv_bias=False,
        non_affine_group_norm=False,
        activation="relu",
        vq_type="none",
    )
    torch.manual_seed(0)
    model = Wav2Vec1(Wav2Vec1Config.from_args(args))
    torch.save({"args": args, "model": to_fairseq_keys(model.state_dict())}, path)
    return f"w2v1:{path}"


def encoder_specs(folder: Path) -> list[tuple[str, str]]:
    """(what, spec) for every kind, random weights, in ``folder``."""
    from ksr.extract.encoders.tiny import _save_tiny_audio, save_tiny_whisper

    specs = [("fbank (Kaldi log-mel)", "fbank")]
    for what, name, kwargs in [
        ("wav2vec 2.0, layer-norm front end (large-lv60 kind), tiny", "w2v2-layer", {}),
        ("wav2vec 2.0, group-norm front end (base kind), tiny", "w2v2-group", dict(norm="group")),
        ("HuBERT, layer-norm front end, tiny", "hubert", dict(model_type="hubert")),
        ("WavLM, layer-norm front end, tiny", "wavlm", dict(model_type="wavlm")),
        ("data2vec-audio, tiny", "d2v", dict(model_type="data2vec-audio")),
    ]:
        _save_tiny_audio(folder / name, **kwargs)
        specs.append((what, f"hf:{folder / name}"))
    save_tiny_whisper(folder / "whisper", layers=2)
    specs.append(("Whisper encoder, tiny", f"hf:{folder / 'whisper'}"))
    specs.append(("wav2vec 1.0, large settings (the paper's)", write_wav2vec1_large(folder / "w2v1.pt")))
    specs.append(("emotion2vec, base settings", write_emotion2vec_base(folder / "e2v")))
    return specs


def write_emotion2vec_base(folder: Path) -> str:
    """A FunASR emotion2vec folder with base settings (768 dims, 4 + 8 blocks, ALiBi, 10 extra
    tokens, normalised input) and random weights."""
    import yaml

    from ksr.extract.encoders.emotion2vec import E2VConfig, Emotion2Vec, funasr_names

    audio = {
        "feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
        "extractor_mode": "layer_norm",
        "conv_pos_width": 95,
        "conv_pos_depth": 5,
        "conv_pos_groups": 16,
        "prenet_depth": 4,
        "num_extra_tokens": 10,
        "use_alibi_encoder": True,
        "num_alibi_heads": 12,
        "learned_alibi_scale_per_head": True,
    }
    conf = {
        "embed_dim": 768,
        "depth": 8,
        "num_heads": 12,
        "mlp_ratio": 4.0,
        "layer_norm_first": False,
        "normalize": True,
        "modalities": {"audio": audio},
    }
    c = E2VConfig.from_model_conf(conf)
    torch.manual_seed(0)
    ours = Emotion2Vec(c).state_dict()
    folder.mkdir()
    torch.save({theirs: ours[mine] for theirs, mine in funasr_names(c).items()}, folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": conf}))
    return f"e2v:{folder}"


def measure(spec: str, turns: list[np.ndarray], cuts: list[float]) -> list[dict]:
    from ksr.extract.encoders import load_encoder

    enc = load_encoder(spec, device="cpu")
    whole = [enc.encode([w])[0] for w in turns]
    rows = []
    for cut in cuts:
        n = int(round(cut * 16000))
        diffs, scale = [], []
        for w, full in zip(turns, whole, strict=True):
            part = enc.encode([w[:n]])[0]
            keep = min(KEEP, part.shape[0])
            diffs.append((part[:keep] - full[:keep]).abs())
            scale.append(full[:keep].abs().mean().item())
        d = torch.cat([x.flatten() for x in diffs])
        rows.append(
            dict(
                cut=cut,
                frame_rate=enc.frame_rate,
                kept=min(KEEP, enc.num_frames(n)),
                max=d.max().item(),
                mean=d.mean().item(),
                scale=float(np.mean(scale)),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--cuts", default="5,10")
    parser.add_argument("--only", default="", help="measure the encoders whose name holds this")
    args = parser.parse_args()
    cuts = [float(c) for c in args.cuts.split(",")]
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from ksr.extract.encoders.hf import quiet_transformers

        turns = speech_turns(tmp, args.turns)
        with quiet_transformers():
            specs = encoder_specs(tmp)
        print(
            f"{len(turns)} turns of {TURN_SECONDS:g} s of generated speech; kept frames: the "
            f"first min({KEEP}, frames of the cut audio)\n"
        )
        print("| encoder | cut (s) | frames kept | max abs diff | mean abs diff | mean abs feature |")
        print("|---|---|---|---|---|---|")
        for what, spec in specs:
            if args.only.lower() not in what.lower():
                continue
            for r in measure(spec, turns, cuts):
                print(
                    f"| {what} | {r['cut']:g} | {r['kept']} | {r['max']:.3g} | {r['mean']:.3g} | {r['scale']:.3g} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
