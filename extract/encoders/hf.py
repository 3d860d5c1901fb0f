"""Hugging Face transformers encoders: a hub id or a local directory saved with ``save_pretrained``.

Audio: wav2vec 2.0, HuBERT, WavLM, data2vec-audio (``AutoModel`` + the checkpoint's feature
extractor). Text: RoBERTa, BERT and kin (``AutoModel`` + ``AutoTokenizer``, the tokenizer's own
special tokens included: ``<s> ... </s>`` for RoBERTa). A chosen hidden layer is returned, where
0 is the input of the first Transformer layer and ``num_layers`` the last layer's output.

Batches are padded with an attention mask, so an utterance gives the same features (to float
rounding) in a batch as alone. That holds for speech models whose config says
``feat_extract_norm == "layer"`` (wav2vec2-large-lv60, HuBERT large, WavLM large, ...). The
others are run one utterance at a time: a group-norm front end (wav2vec2-base, HuBERT base,
WavLM base) normalises over time including the padding and takes no attention mask, and
data2vec-audio's stack of positional convolutions carries padding into the last frames.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ...common import SAMPLE_RATE, sha256_file
from .base import AudioEncoder, EncoderError, TextEncoder, placement

#: Files that decide the features besides the weights (configs, tokenizer, preprocessing).
_SETTINGS_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)
#: Weight files by preference, as ``from_pretrained`` picks them.
_WEIGHT_PATTERNS = (("*.safetensors", "model.safetensors.index.json"), ("*.bin", "pytorch_model.bin.index.json"))
_PROBE_TEXT = "Hello world, this is a test."


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and load reports while loading (we check ourselves)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def checkpoint_digest(model_dir: str | os.PathLike, extra: Sequence[str] = ()) -> str:
    """``sha256:<hex>`` over the names and contents of the files that determine the features.

    The weights as ``from_pretrained`` picks them (safetensors first, else ``.bin``) plus the
    config, feature-extractor and tokenizer files present, and the ``extra`` file names present
    (the ASR adds its decoding settings). A file's bytes, not its path or date.
    """
    model_dir = Path(model_dir)
    files = [model_dir / n for n in (*_SETTINGS_FILES, *extra) if (model_dir / n).is_file()]
    for pattern, index in _WEIGHT_PATTERNS:
        weights = sorted(model_dir.glob(pattern))
        if weights:
            files += weights + ([model_dir / index] if (model_dir / index).is_file() else [])
            break
    else:
        raise EncoderError(f"no weight files (*.safetensors or *.bin) in {model_dir}")
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        h.update(path.name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def check_local_folder(source: str) -> None:
    """A source written as a path (``/``, ``.``, ``~``) must be a folder: never a hub lookup."""
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
        raise EncoderError(f"model folder not found: {source}")


def resolve_model_dir(source: str, revision: str | None) -> tuple[Path, str | None]:
    """The local folder holding the checkpoint's files, and the hub commit when from the hub."""
    check_local_folder(source)
    if Path(source).is_dir():
        return Path(source).resolve(), None
    from transformers.utils import cached_file

    try:
        config = cached_file(source, "config.json", revision=revision)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:300]
        raise EncoderError(f"cannot find model {source!r} (not a local folder, and the hub gave: {reason})") from None
    folder = Path(config).parent
    commit = folder.name if folder.parent.name == "snapshots" else revision
    return folder, commit


def load_pretrained(source: str, revision: str | None, auto_class=None):
    """``AutoModel`` (or ``auto_class``) in eval mode; a checkpoint missing weights the model
    needs is refused."""
    if auto_class is None:
        from transformers import AutoModel

        auto_class = AutoModel

    try:
        with quiet_transformers():
            model, info = auto_class.from_pretrained(source, revision=revision, output_loading_info=True)
    except pickle.UnpicklingError as err:  # transformers reads .bin files with weights_only=True
        found = re.search(r"GLOBAL (\S+)", str(err))
        raise EncoderError(
            f"cannot load model {source!r}: its weight file holds more than tensors"
            f"{f' ({found.group(1)})' if found else ''}, which ksr does not unpickle; "
            f"use a copy of the checkpoint saved as safetensors (model.safetensors)"
        ) from None
    except (OSError, ValueError, KeyError) as err:
        reason = " ".join(str(err).split())[:300]
        raise EncoderError(f"cannot load model {source!r}: {reason}") from None
    # The pooler is not used (hidden states are); anything else missing would be random.
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")]
    if missing:
        raise EncoderError(
            f"{source!r} lacks {len(missing)} weights of {type(model).__name__} "
            f"(e.g. {missing[0]}): its features would be random"
        )
    return model.eval()


def _layer_index(layer: int, num_layers: int, source: str) -> int:
    if not -(num_layers + 1) <= layer <= num_layers:
        raise EncoderError(f"layer {layer} is out of range for {source}: 0..{num_layers} (or -{num_layers + 1}..-1)")
    return layer % (num_layers + 1)


def _spec(source: str, layer: int, revision: str | None) -> str:
    return f"hf:{source}@layer={layer}" + (f"@revision={revision}" if revision else "")


class HFEncoderMixin:
    """Loading shared by the audio and text encoders."""

    def _keep(self, model):
        """The part of the loaded model that runs (Whisper keeps its encoder only)."""
        return model

    def _hash_checkpoint(self) -> None:
        """The digest, taken once every file that decides the features is here: from the hub, the
        processor's and tokenizer's files arrive after the weights."""
        self.digest = checkpoint_digest(self._folder)

    def _setup(
        self,
        source: str,
        layer: int,
        revision: str | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> str:
        """Load the model and set the declared attributes but the digest (see _hash_checkpoint);
        returns the source as loaded."""
        given = str(source)
        source = os.path.expanduser(given)
        folder, commit = resolve_model_dir(source, revision)
        model = self._keep(load_pretrained(source, revision))
        self.device, self.dtype = placement(device, dtype)
        self.model = model.to(device=self.device, dtype=self.dtype)
        config = model.config
        self.model_type = config.model_type
        self.num_layers = int(config.num_hidden_layers)
        self.dim = int(config.hidden_size)
        self.layer = _layer_index(layer, self.num_layers, source)
        self.revision = commit
        self._folder = folder  # hashed by _hash_checkpoint once the processor's files are here too
        self.name = f"hf:{given}"
        self.spec = _spec(given, self.layer, revision)
        return source


class HFAudioEncoder(HFEncoderMixin, AudioEncoder):
    """A transformers speech model (wav2vec 2.0, HuBERT, WavLM, data2vec-audio)."""

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        layer: int = -1,
        revision: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        from transformers import AutoFeatureExtractor

        source = self._setup(source, layer, revision, device, dtype)
        config = self.model.config
        if not hasattr(self.model, "_get_feat_extract_output_lengths") or not hasattr(config, "conv_stride"):
            raise EncoderError(
                f"{source!r} is a {config.model_type} model, not a speech model "
                "with a convolutional front end (wav2vec2, HuBERT, WavLM, "
                "data2vec-audio)"
            )
        try:
            with quiet_transformers():
                self.feature_extractor = AutoFeatureExtractor.from_pretrained(source, revision=revision)
        except (OSError, ValueError, KeyError) as err:
            reason = " ".join(str(err).split())[:200]
            raise EncoderError(
                f"{source!r} has no usable feature extractor (preprocessor_config.json): {reason}"
            ) from None
        rate = getattr(self.feature_extractor, "sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise EncoderError(f"{source!r} expects {rate} Hz audio; ksr feeds {SAMPLE_RATE} Hz")
        # Padding changes what group norm over time sees, and data2vec-audio's stacked
        # positional convs (no feat_extract_norm) carry padding into the last ~40 frames:
        # only layer-norm front ends batch exactly; the others run one utterance at a time.
        self.batched = getattr(config, "feat_extract_norm", None) == "layer"
        hop = int(np.prod(config.conv_stride))
        self.frame_rate = SAMPLE_RATE / hop
        need = 1
        for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride), strict=True):
            need = (need - 1) * stride + kernel
        self.min_samples = need
        self._hash_checkpoint()

    def num_frames(self, num_samples: int) -> int:
        lengths = self.model._get_feat_extract_output_lengths(torch.tensor([num_samples]))
        return max(int(lengths[0]), 0)

    def _forward(self, wavs: list[np.ndarray], mask: bool) -> torch.Tensor:
        inputs = self.feature_extractor(
            wavs, sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=mask, return_tensors="pt"
        )
        values = inputs["input_values"].to(device=self.device, dtype=self.dtype)
        kwargs = {"attention_mask": inputs["attention_mask"].to(self.device)} if mask else {}
        out = self.model(values, output_hidden_states=True, **kwargs)
        return out.hidden_states[self.layer]

    @torch.inference_mode()
    def encode(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        wavs = self.checked(wavs)
        if not wavs:
            return []
        frames = [self.num_frames(len(w)) for w in wavs]
        if self.batched:
            hidden = self._forward(wavs, mask=True)
            rows = [hidden[i, :n] for i, n in enumerate(frames)]
        else:
            rows = [self._forward([w], mask=False)[0] for w in wavs]
        for r, n in zip(rows, frames, strict=True):
            if r.shape[0] != n:  # the conv formula and the model must agree
                raise EncoderError(f"{self.name} gave {r.shape[0]} frames where its conv formula says {n}")
        return [r.float().cpu() for r in rows]


class HFTextEncoder(HFEncoderMixin, TextEncoder):
    """A transformers text model (RoBERTa, BERT and kin) with its own tokenizer."""

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        layer: int = -1,
        revision: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        from transformers import AutoTokenizer

        source = self._setup(source, layer, revision, device, dtype)
        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        except (OSError, ValueError, KeyError) as err:
            reason = " ".join(str(err).split())[:200]
            raise EncoderError(f"{source!r} has no usable tokenizer: {reason}") from None
        self.tokenizer.padding_side = "right"  # encode() slices each row's first n positions
        self.max_tokens = self._max_tokens()
        self._check_tokenizer(source)
        self._hash_checkpoint()

    def _max_tokens(self) -> int:
        """The longest input the model takes (texts beyond it are truncated)."""
        limit = self.tokenizer.model_max_length
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:
            # RoBERTa-style position ids start after the padding index.
            offset = (
                (self.model.config.pad_token_id or 0) + 1
                if self.model_type in ("roberta", "xlm-roberta", "camembert", "data2vec-text")
                else 0
            )
            limit = min(limit, positions - offset)
        return int(limit)

    def _check_tokenizer(self, source: str) -> None:
        """Refuse a tokenizer that maps text to special tokens only (an empty vocabulary)."""
        ids = self.tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
        specials = set(self.tokenizer.all_special_ids)
        if not ids or all(i in specials for i in ids):
            raise EncoderError(
                f"the tokenizer of {source!r} turns text into no tokens: its vocabulary is empty or was not loaded"
            )

    def tokenize(self, text: str) -> list[str]:
        ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        return self.tokenizer.convert_ids_to_tokens(ids)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> list[torch.Tensor]:
        texts = list(texts)
        if not texts:
            return []
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self.layer]
        return [hidden[i, :n].float().cpu() for i, n in enumerate(lengths)]
