"""Tiny built-in encoders for tests and the demo: no download, deterministic.

Each is built from a config with a fixed seed (random weights), saved with ``save_pretrained`` to
a local folder, and then loaded through exactly the code a user's real checkpoint takes
(:class:`~ksr.extract.encoders.hf.HFAudioEncoder` / ``HFTextEncoder``). Same seed, same
weights, same features. Their features carry no meaning: they exercise the pipeline.

- ``tiny-audio``: a wav2vec 2.0 model, 4 conv layers (hop 160 samples: 100 frames/s, like the
  paper's wav2vec 1.0), layer-norm front end (so batches take an attention mask), hidden 32,
  2 Transformer layers.
- ``tiny-text``: a RoBERTa model, hidden 32, 2 layers, with a byte-level BPE vocabulary trained
  in-process (``tokenizers``) on the small built-in text below.

Folders live under ``$KSR_CACHE_DIR/tiny`` (default ``~/.cache/ksr/tiny``) or a given root, one
per name and version, and are rebuilt when absent or incomplete. A build is written to a
temporary folder and renamed, so concurrent builders never see half a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

TINY_VERSION = 1
SEED = 20220523
_MARKER = "ksr-tiny.json"  # written last: a folder without it is incomplete

#: The text the tiny BPE vocabulary is trained on (every byte stays representable anyway).
TINY_TEXT = """\
Excuse me. Do you have your forms? Yeah, I have them here.
I can't believe you did that! Why would you do that to me?
Well, that's fine: I'm happy now, really happy.
I'm so sad and tired. I just want to go home.
Get out of my way! I'm not going to say it again.
Oh my god, that's wonderful news, congratulations!
It's okay. We'll figure it out together, don't worry.
No, no, no. You never listen to me, you never did.
What time is it? It's late, we should go.
[LAUGHTER] That is the funniest thing I have heard all day.
I miss her so much. Everything reminds me of her.
Are you kidding me? This is the third time this week!
Sure, sounds good. Let's meet at the station at nine.
"""
_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


def tiny_root(root: str | os.PathLike | None = None) -> Path:
    """Where tiny checkpoints are kept: ``root``, else ``$KSR_CACHE_DIR/tiny``, else
    ``$XDG_CACHE_HOME/ksr/tiny`` or ``~/.cache/ksr/tiny``."""
    if root is not None:
        return Path(root)
    if os.environ.get("KSR_CACHE_DIR"):
        return Path(os.environ["KSR_CACHE_DIR"]) / "tiny"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ksr" / "tiny"


def _save_tiny_audio(folder: Path, *, norm: str = "layer", model_type: str = "wav2vec2") -> None:
    """A tiny speech model of ``model_type`` (wav2vec2, hubert, wavlm, data2vec-audio)."""
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32, 32),
        conv_kernel=(10, 8, 8, 4),
        conv_stride=(5, 4, 4, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=8,
        mask_time_prob=0.0,
    )
    if model_type == "data2vec-audio":
        kwargs.update(conv_pos_kernel_size=5, num_conv_pos_embeddings=5)
    else:
        kwargs.update(feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    if model_type == "wavlm":
        kwargs.update(num_buckets=16, max_bucket_distance=64)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(SEED)
    AutoModel.from_config(config).save_pretrained(folder)
    # Layer-norm front ends take an attention mask; group norm ones do not (as released).
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=norm == "layer"
    ).save_pretrained(folder)


def _train_bpe():
    """A byte-level BPE trained on TINY_TEXT: (vocab, merges)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TINY_TEXT.splitlines(), vocab_size=512, min_frequency=1, special_tokens=_SPECIALS, show_progress=False
    )
    model = json.loads(bpe._tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return bpe.get_vocab(), merges


def _save_tiny_text(folder: Path) -> None:
    """A tiny RoBERTa with its BPE tokenizer."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab, merges = _train_bpe()
    # transformers 5: vocab_file=/merges_file= would silently build an EMPTY tokenizer.
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=128)
    tokenizer.save_pretrained(folder)
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(SEED)
    RobertaModel(config).save_pretrained(folder)  # pooler included: a complete checkpoint


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-audio": _save_tiny_audio,
    "tiny-text": _save_tiny_text,
}
TINY_NAMES = tuple(_BUILDERS)


def build_tiny(name: str, folder: str | os.PathLike, **options) -> Path:
    """Build tiny checkpoint ``name`` into ``folder`` (which must not exist), atomically."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny encoder {name!r}: one of {', '.join(TINY_NAMES)}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        from .hf import quiet_transformers

        with quiet_transformers():
            _BUILDERS[name](tmp, **options)
        (tmp / _MARKER).write_text(
            json.dumps({"name": name, "version": TINY_VERSION, "seed": SEED, "options": options})
        )
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / _MARKER).is_file():  # not a concurrent builder's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def ensure_tiny(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of tiny checkpoint ``name``, built first when absent or incomplete."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny encoder {name!r}: one of {', '.join(TINY_NAMES)}")
    folder = tiny_root(root) / f"{name}-v{TINY_VERSION}"
    if (folder / _MARKER).is_file():
        return folder
    if folder.exists():  # an interrupted build from an older ksr: start again
        shutil.rmtree(folder)
    return build_tiny(name, folder)


#: The tiny ASR Whisper's special tokens (ids 0, 1, 2), as a released Whisper names them.
_WHISPER_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")


def _tiny_whisper_tokenizer():
    """A Whisper tokenizer whose vocabulary is the specials plus the words of TINY_TEXT, one
    token each (byte-level ``Ġword``): every id decodes to whole words, never to a torn byte."""
    import re

    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    vocab = {s: i for i, s in enumerate(_WHISPER_SPECIALS)}
    for word in sorted(set(re.findall(r"[a-z']+", TINY_TEXT.lower()))):
        vocab["\u0120" + word] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    # Registered as special, so that decoding with skip_special_tokens drops them.
    tokenizer.add_tokens([AddedToken(s, special=True, normalized=False) for s in _WHISPER_SPECIALS[1:]], True)
    return tokenizer, len(vocab)


def save_tiny_whisper(
    folder: str | os.PathLike, *, layers: int = 2, mel: int = 80, seed: int = SEED, asr: bool = False
) -> Path:
    """A tiny Whisper (hidden 32, ``layers`` encoder layers, random weights) written with
    ``save_pretrained`` + its feature extractor into ``folder``, loadable as ``hf:<folder>``:
    what the tests and the measurements of docs/encoders.md use in place of a released one.

    ``asr=True``: a whole speech-recognition checkpoint instead, as a released Whisper is one
    (``WhisperForConditionalGeneration``, a tokenizer and a generation config), for ``ksr
    transcribe``. Its vocabulary is the words of TINY_TEXT, and its weights are drawn wider
    (std 0.5, not 0.02) so that what it "hears" changes with the audio; it decodes at most 12
    tokens. Its words are noise: it exercises the plumbing.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    folder = Path(folder)
    tokenizer, vocab_size = _tiny_whisper_tokenizer() if asr else (None, 16)
    # transformers 5 checks the special token ids against the vocabulary: give them all.
    if asr:  # ids of the tokenizer's specials; wider weights; room for 12 decoded tokens
        ids = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=1)
        sizes = dict(decoder_layers=2, max_target_positions=32, init_std=0.5)
    else:
        ids = dict(pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
        sizes = dict(decoder_layers=1, max_target_positions=16)
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=mel,
        d_model=32,
        encoder_layers=layers,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        **ids,
        **sizes,
    )
    torch.manual_seed(seed)
    from .hf import quiet_transformers

    with quiet_transformers():
        if not asr:
            WhisperModel(config).save_pretrained(folder)
            WhisperFeatureExtractor(feature_size=mel).save_pretrained(folder)
            return folder
        from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

        model = WhisperForConditionalGeneration(config)
        model.generation_config = GenerationConfig(**ids, max_length=12)
        model.save_pretrained(folder)
        WhisperProcessor(WhisperFeatureExtractor(feature_size=mel), tokenizer).save_pretrained(folder)
    return folder
