"""fairseq RoBERTa checkpoints as transformers ``RobertaModel`` folders (then used as ``hf:``).

The paper's text features are fairseq's ``roberta.extract_features(roberta.encode(text))`` of
``roberta.large``. fairseq's RoBERTa and transformers' ``RobertaModel`` compute the same function
(post-norm Transformer layers, learned positions counted from the padding index + 1, a layer norm
on the embeddings, no embedding scale), so instead of a second RoBERTa implementation ksr converts
the checkpoint once into a folder that the ``hf:`` loader reads like any other::

    python -m ksr.extract.encoders.roberta_fairseq /models/roberta.large/model.pt /models/roberta-large-fairseq \\
        --encoder-json encoder.json --vocab-bpe vocab.bpe       # dict.txt: next to model.pt
    ksr extract --text-encoder hf:/models/roberta-large-fairseq@layer=-1 ...

What the folder holds:

- ``config.json`` + ``model.safetensors``: a ``RobertaModel`` (float32) with the checkpoint's
  weights under transformers' names (:func:`to_hf_keys`; every weight accounted for, shapes
  checked). The settings come from the checkpoint (``args``, or ``cfg["model"]``) where they
  decide the features; settings fairseq would build differently from ``RobertaModel`` (pre-norm
  layers, an embedding scale, sinusoidal positions, extra attention biases, pruned layers) are
  refused by name.
- ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``: a byte-level BPE tokenizer that
  gives fairseq's token ids. fairseq tokenises in two steps: GPT-2's BPE (``encoder.json``,
  ``vocab.bpe``) turns text into GPT-2 ids, written as strings, and the model's dictionary
  (``dict.txt``, after ``<s> <pad> </s> <unk>`` = 0..3 and before the ``<mask>`` the masked-LM
  task appends) turns those strings into model ids. :func:`compose_vocab` composes the two maps
  into one (GPT-2 token string -> model id); a GPT-2 token the dictionary lacks becomes
  ``<unk>`` in both. The merges are read as fairseq reads ``vocab.bpe``: its first and last
  lines are skipped.
- ``ksr-fairseq-roberta.json``: where it came from (sha256 of each input file).

The checkpoint is read by :func:`ksr.extract.encoders.wav2vec1.read_fairseq_checkpoint` (``torch.load``
with ``weights_only=True``; only ``argparse.Namespace`` and numpy scalars besides tensors and
plain data), so nothing pickled in it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ...common import sha256_file
from .base import EncoderError
from .wav2vec1 import read_fairseq_checkpoint

#: fairseq's Dictionary: these four come first, in this order (ids 0..3).
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"  # appended after dict.txt by fairseq's masked_lm task
PAD_ID = 1
PROVENANCE = "ksr-fairseq-roberta.json"
_PREFIXES = ("encoder.sentence_encoder.", "decoder.sentence_encoder.")  # 0.10+, 0.9 and earlier
_LAYER_NORM_EPS = 1e-5  # fairseq's LayerNorm (torch's default); transformers' RoBERTa uses 1e-12
#: fairseq activation_fn -> transformers hidden_act (same functions: erf GELU, tanh GELU, ReLU).
_ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "relu": "relu"}
#: Settings that must have one value for RobertaModel to compute what fairseq computes; the
#: second item is fairseq 0.12's RoBERTa default, used when the checkpoint does not record it.
_MUST = (
    ("encoder_normalize_before", False, "pre-norm layers (RobertaModel is post-norm)"),
    ("no_scale_embedding", True, "embeddings scaled by sqrt(dim)"),
    ("encoder_learned_pos", True, "sinusoidal positions"),
    ("add_bias_kv", False, "extra key/value biases"),
    ("add_zero_attn", False, "an extra zero attention slot"),
)
#: Weights that serve pre-training or fine-tuning heads, not the features.
_NOT_FEATURES = (
    "encoder.lm_head.",
    "decoder.lm_head.",
    "classification_heads.",
    "encoder.sentence_encoder.version",
    "decoder.sentence_encoder.version",
)

# (fairseq name after the sentence-encoder prefix, transformers name); \1 is the layer index.
_LAYER_MAP = (
    (r"layers\.(\d+)\.self_attn\.q_proj\.", r"encoder.layer.\1.attention.self.query."),
    (r"layers\.(\d+)\.self_attn\.k_proj\.", r"encoder.layer.\1.attention.self.key."),
    (r"layers\.(\d+)\.self_attn\.v_proj\.", r"encoder.layer.\1.attention.self.value."),
    (r"layers\.(\d+)\.self_attn\.out_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"layers\.(\d+)\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"layers\.(\d+)\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"layers\.(\d+)\.final_layer_norm\.", r"encoder.layer.\1.output.LayerNorm."),
    (r"embed_tokens\.", r"embeddings.word_embeddings."),
    (r"embed_positions\.", r"embeddings.position_embeddings."),
    (r"layernorm_embedding\.", r"embeddings.LayerNorm."),
    (r"emb_layer_norm\.", r"embeddings.LayerNorm."),  # fairseq <= 0.9's name
)
_TOKEN_TYPES = "embeddings.token_type_embeddings.weight"  # RobertaModel's; zeros (one type)
#: transformers name -> fairseq name (``layernorm_embedding`` spelling), for the inverse.
_BACK_MAP = (
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.self_attn_layer_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.final_layer_norm."),
    (r"embeddings\.word_embeddings\.", r"embed_tokens."),
    (r"embeddings\.position_embeddings\.", r"embed_positions."),
    (r"embeddings\.LayerNorm\.", r"layernorm_embedding."),
)


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class RobertaSettings:
    """What ``RobertaModel``'s config needs, read from a fairseq RoBERTa checkpoint."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int  # rows of the position table: max positions + padding index + 1
    hidden_act: str

    @property
    def max_tokens(self) -> int:
        """The longest input, special tokens included (512 for roberta.large)."""
        return self.max_position_embeddings - PAD_ID - 1

    def hf_config(self):
        from transformers import RobertaConfig

        return RobertaConfig(
            **asdict(self),
            type_vocab_size=1,
            layer_norm_eps=_LAYER_NORM_EPS,
            pad_token_id=PAD_ID,
            bos_token_id=SPECIALS.index("<s>"),
            eos_token_id=SPECIALS.index("</s>"),
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
        )


#: fairseq's RoBERTa architectures whose defaults are post-norm RoBERTa's, with their head
#: count (used when the settings omit it). ``roberta_prenorm`` defaults to pre-norm layers and
#: ``xlm`` (XLM-R) tokenises with sentencepiece, not GPT-2's BPE: both are refused.
_ARCH_HEADS = {"roberta": 12, "roberta_base": 12, "roberta_large": 16}


def _as_dict(settings: Any) -> Mapping[str, Any]:
    if isinstance(settings, argparse.Namespace):
        return vars(settings)
    if isinstance(settings, Mapping):
        return settings
    raise EncoderError(
        f"RoBERTa checkpoint: the model settings are a {type(settings).__name__}, not a Namespace or dict"
    )


def _strip_prefix(state: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The sentence-encoder weights without their prefix, and the prefix found."""
    found = [p for p in _PREFIXES if any(k.startswith(p) for k in state)]
    if len(found) != 1:
        raise EncoderError(
            "RoBERTa checkpoint: expected weights under one of "
            f"{', '.join(_PREFIXES)} (fairseq's RobertaModel), found "
            + ("both" if found else f"none (e.g. {next(iter(state), 'no weights at all')})")
        )
    prefix = found[0]
    return prefix, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_settings(settings: Any, state: Mapping[str, Any]) -> RobertaSettings:
    """The model's shape from its weights, the rest from ``settings``; refuses what RobertaModel
    cannot compute the same way, naming the setting."""
    get = _as_dict(settings)
    arch = get.get("arch") or get.get("_name")
    if arch is not None and arch not in _ARCH_HEADS:
        raise EncoderError(
            f"RoBERTa checkpoint: arch {arch!r} is not supported (supported: {', '.join(_ARCH_HEADS)}; "
            "roberta_prenorm has pre-norm layers, xlm a sentencepiece tokenizer)"
        )
    for name, wanted, what in _MUST:
        value = get.get(name)
        if value is not None and bool(value) != wanted:
            raise EncoderError(f"RoBERTa checkpoint: unsupported {name}={value!r} ({what}; RobertaModel has none)")
    if get.get("layernorm_embedding") is False:
        raise EncoderError("RoBERTa checkpoint: unsupported layernorm_embedding=False (RobertaModel always has it)")
    keep = get.get("encoder_layers_to_keep")
    if keep:
        raise EncoderError(f"RoBERTa checkpoint: unsupported encoder_layers_to_keep={keep!r} (layers pruned at load)")
    act = get.get("activation_fn") or "gelu"
    if act not in _ACTIVATIONS:
        raise EncoderError(
            f"RoBERTa checkpoint: unsupported activation_fn={act!r} (supported: {', '.join(_ACTIVATIONS)})"
        )
    _, enc = _strip_prefix(state)

    def shape(name: str, dims: int) -> tuple[int, ...]:
        value = enc.get(name)
        if not isinstance(value, torch.Tensor) or value.dim() != dims:
            raise EncoderError(f"RoBERTa checkpoint: weight sentence_encoder.{name} is missing or misshapen")
        return tuple(value.shape)

    vocab, dim = shape("embed_tokens.weight", 2)
    if "embed_positions.weight" not in enc:
        raise EncoderError("RoBERTa checkpoint: no learned position table (sentence_encoder.embed_positions.weight)")
    positions, pos_dim = shape("embed_positions.weight", 2)
    if not any(k.startswith(("layernorm_embedding.", "emb_layer_norm.")) for k in enc):
        raise EncoderError("RoBERTa checkpoint: no embedding layer norm (RobertaModel always has one)")
    indices = {int(m.group(1)) for k in enc if (m := re.match(r"layers\.(\d+)\.", k))}
    if not indices or indices != set(range(len(indices))):
        raise EncoderError(f"RoBERTa checkpoint: layers {sorted(indices)} are not 0..n-1")
    ffn, _ = shape("layers.0.fc1.weight", 2)
    heads = get.get("encoder_attention_heads") or _ARCH_HEADS.get(arch)
    if heads is None:
        raise EncoderError("RoBERTa checkpoint: its settings lack encoder_attention_heads (and arch names no default)")
    if type(heads) is not int or heads <= 0 or dim % heads:
        raise EncoderError(f"RoBERTa checkpoint: encoder_attention_heads={heads!r} does not divide the width {dim}")
    if pos_dim != dim or positions <= PAD_ID + 1:
        raise EncoderError(f"RoBERTa checkpoint: position table of shape {(positions, pos_dim)} for width {dim}")
    return RobertaSettings(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=len(indices),
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
        hidden_act=_ACTIVATIONS[act],
    )


# --------------------------------------------------------------------------------------------
# Weights


def _rename(key: str) -> str | None:
    for pattern, repl in _LAYER_MAP:
        m = re.match(pattern, key)
        if m:
            return m.expand(repl) + key[m.end() :]
    return None


def _split_in_proj(enc: dict[str, Any]) -> dict[str, Any]:
    """Very old fairseq kept q, k, v in one ``in_proj_weight`` / ``in_proj_bias`` (rows in that
    order); fairseq splits them on load, and so does this."""
    out = dict(enc)
    for key in [k for k in enc if re.search(r"\.self_attn\.in_proj_(weight|bias)$", k)]:
        value = out.pop(key)
        base, kind = key.rsplit(".in_proj_", 1)
        third = value.shape[0] // 3
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{base}.{name}.{kind}"] = value[i * third : (i + 1) * third]
    return out


def to_hf_keys(state: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """fairseq RoBERTa weights under ``RobertaModel``'s names (``token_type_embeddings`` added
    as zeros, as RoBERTa has no segment embedding). Head weights (``lm_head``,
    ``classification_heads``) are dropped; any other unknown weight is refused."""
    prefix, enc = _strip_prefix(state)
    enc = _split_in_proj(enc)
    out: dict[str, torch.Tensor] = {}
    unknown = [k for k in state if not k.startswith(prefix) and not k.startswith(_NOT_FEATURES)]
    for key, value in enc.items():
        if prefix + key in _NOT_FEATURES or key == "embed_positions._float_tensor":
            continue
        name = _rename(key)
        if name is None:
            unknown.append(prefix + key)
            continue
        if not isinstance(value, torch.Tensor):
            raise EncoderError(f"{source}: weight {prefix}{key} is a {type(value).__name__}, not a tensor")
        if name in out:
            raise EncoderError(f"{source}: two weights map to {name} (emb_layer_norm and layernorm_embedding?)")
        out[name] = value.detach().to(torch.float32)
    if unknown:
        raise EncoderError(
            f"{source}: {len(unknown)} weights that a fairseq RoBERTa encoder does not have: "
            + ", ".join(sorted(unknown)[:5])
            + (" ..." if len(unknown) > 5 else "")
        )
    width = out["embeddings.word_embeddings.weight"].shape[1]
    out[_TOKEN_TYPES] = torch.zeros(1, width)
    return out


def from_hf_keys(
    state: Mapping[str, torch.Tensor], prefix: str = "encoder.sentence_encoder."
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_hf_keys`: a converted ``RobertaModel`` state under fairseq's names
    (``layernorm_embedding`` spelling); the zero ``token_type_embeddings`` and a pooler dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue
        if key == _TOKEN_TYPES:
            if value.abs().max() != 0:
                raise ValueError("token_type_embeddings are not zero: not a converted fairseq RoBERTa")
            continue
        for pattern, repl in _BACK_MAP:
            m = re.match(pattern, key)
            if m:
                out[prefix + m.expand(repl) + key[m.end() :]] = value
                break
        else:
            raise KeyError(f"not a converted RoBERTa weight: {key}")
    return out


def load_into_model(hf_state: Mapping[str, torch.Tensor], settings: RobertaSettings, source: str = "checkpoint"):
    """A ``RobertaModel`` (no pooler) with these weights; every weight must fit exactly."""
    from transformers import RobertaModel

    model = RobertaModel(settings.hf_config(), add_pooling_layer=False)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(hf_state))
    extra = sorted(set(hf_state) - set(expected))
    if missing or extra:
        raise EncoderError(
            f"{source}: the weights do not fit a RoBERTa of the checkpoint's settings"
            + (f"; missing {', '.join(missing[:5])}" if missing else "")
            + (f"; not expected {', '.join(extra[:5])}" if extra else "")
        )
    for key, value in hf_state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise EncoderError(
                f"{source}: weight {key} has shape {tuple(value.shape)} where the settings give "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(dict(hf_state), strict=False)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Tokenizer


def read_dictionary(path: str | os.PathLike) -> list[str]:
    """fairseq's model vocabulary, index by index, as its ``Dictionary`` builds it: ``<s> <pad>
    </s> <unk>``, then one entry per ``dict.txt`` line (``<symbol> <count>``, optionally followed
    by ``#fairseq:overwrite``), then ``<mask>`` unless already there (the masked-LM task's
    ``add_symbol``). A repeated symbol is refused unless flagged; flagged, it takes a new index
    (the one fairseq then encodes it to) and its earlier index is never produced."""
    symbols = list(SPECIALS)
    seen = set(symbols)
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        symbol, _, field = line.rstrip().rpartition(" ")
        overwrite = field == "#fairseq:overwrite"
        if overwrite:
            symbol, _, field = symbol.rpartition(" ")
        try:
            int(field)
        except ValueError:
            symbol = ""
        if not symbol:
            raise EncoderError(f"{path}, line {number}: expected '<symbol> <count> [flags]', got {line[:80]!r}")
        if symbol in seen and not overwrite:
            raise EncoderError(f"{path}, line {number}: duplicate symbol {symbol!r} (fairseq refuses it too)")
        symbols.append(symbol)
        seen.add(symbol)
    if MASK not in seen:
        symbols.append(MASK)
    return symbols


def read_merges(path: str | os.PathLike) -> list[str]:
    """The merges of a GPT-2 ``vocab.bpe`` as fairseq reads them: all lines but the first (the
    ``#version`` line) and the last (empty after the final newline)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")[1:-1]
    merges = []
    for number, line in enumerate(lines, 2):
        pair = line.split()
        if len(pair) != 2:
            raise EncoderError(f"{path}, line {number}: a merge is two symbols, got {line[:80]!r}")
        merges.append(" ".join(pair))
    return merges


def compose_vocab(encoder: Mapping[str, int], symbols: Sequence[str]) -> dict[str, int]:
    """GPT-2 token string -> model id: ``encoder`` (encoder.json) gives the GPT-2 id, whose decimal
    string is a symbol of the model dictionary (``symbols``, see :func:`read_dictionary`). Tokens
    the dictionary lacks are left out (the tokenizer gives ``<unk>`` for them, as fairseq does);
    dictionary symbols that are not GPT-2 ids (``<s>``, ``madeupword0000``, ``<mask>``) keep their
    own text."""
    by_gpt2 = {}
    for token, gpt2_id in encoder.items():
        if type(gpt2_id) is not int:
            raise EncoderError(f"encoder.json: {token!r} maps to {gpt2_id!r}, not an integer")
        by_gpt2[str(gpt2_id)] = token
    vocab: dict[str, int] = {}
    for model_id, symbol in enumerate(symbols):
        token = symbol if model_id < len(SPECIALS) or symbol == MASK else by_gpt2.get(symbol, symbol)
        if token in vocab and symbols[vocab[token]] != symbol:
            raise EncoderError(f"dict.txt: token {token!r} would have two ids ({vocab[token]} and {model_id})")
        vocab[token] = model_id  # a symbol repeated with #fairseq:overwrite: the last index
    return vocab


def _write_tokenizer(folder: Path, vocab: Mapping[str, int], merges: Sequence[str], max_tokens: int) -> None:
    """transformers' RoBERTa tokenizer (byte-level BPE, ``<s> ... </s>``) over these tables,
    saved with ``save_pretrained`` (tokenizer.json, vocab.json, merges.txt, its config)."""
    from transformers import RobertaTokenizer

    from .hf import quiet_transformers

    with quiet_transformers():
        # transformers 5: vocab_file=/merges_file= would build an empty tokenizer; give tables.
        tokenizer = RobertaTokenizer(
            vocab=dict(vocab),
            merges=[tuple(m.split(" ")) for m in merges],
            model_max_length=max_tokens,
            add_prefix_space=False,  # fairseq's GPT-2 BPE adds none
        )
        tokenizer.save_pretrained(folder)


# --------------------------------------------------------------------------------------------
# Conversion


def convert_fairseq_roberta(
    model_pt: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dict_txt: str | os.PathLike | None = None,
    encoder_json: str | os.PathLike | None = None,
    vocab_bpe: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir``: a transformers RoBERTa folder computing the fairseq checkpoint's
    features, with the tokenizer that gives fairseq's token ids; ``hf:<out_dir>`` loads it.

    ``dict_txt`` defaults to ``dict.txt`` next to ``model_pt``, ``encoder_json`` / ``vocab_bpe``
    to ``encoder.json`` / ``vocab.bpe`` there (fairseq's hub interface downloads those two from
    its GPT-2 BPE address; ksr never downloads). Written to a temporary folder and renamed, so
    ``out_dir`` is never half written."""
    model_pt = Path(os.path.expanduser(str(model_pt)))
    if not model_pt.is_file():
        raise EncoderError(f"RoBERTa checkpoint not found: {model_pt}")
    near = model_pt.parent
    files = {
        "dict.txt": Path(dict_txt) if dict_txt else near / "dict.txt",
        "encoder.json": Path(encoder_json) if encoder_json else near / "encoder.json",
        "vocab.bpe": Path(vocab_bpe) if vocab_bpe else near / "vocab.bpe",
    }
    absent = [f"{name} ({path})" for name, path in files.items() if not path.is_file()]
    if absent:
        raise EncoderError(
            f"missing {', '.join(absent)}: the tokenizer needs the model's dict.txt (in fairseq's "
            "roberta archive) and GPT-2's encoder.json and vocab.bpe (which fairseq downloads from "
            "its gpt2_bpe address); give them with --dict / --encoder-json / --vocab-bpe"
        )
    out_dir = Path(os.path.expanduser(str(out_dir)))
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise EncoderError(f"{out_dir} exists and is not empty (overwrite=True / --overwrite replaces it)")

    settings_raw, state = read_fairseq_checkpoint(model_pt)
    settings = read_settings(settings_raw, state)
    hf_state = to_hf_keys(state, source=str(model_pt))
    model = load_into_model(hf_state, settings, source=str(model_pt))

    vocab, merges = _tokenizer_tables(files, settings)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        from .hf import quiet_transformers

        with quiet_transformers():  # no progress bar
            model.save_pretrained(work, safe_serialization=True)
        _write_tokenizer(work, vocab, merges, settings.max_tokens)
        provenance = {
            "converted_by": "ksr.extract.encoders.roberta_fairseq",
            "settings": asdict(settings),
            "sources": {
                name: {"path": str(path.resolve()), "sha256": sha256_file(path)}
                for name, path in {"model.pt": model_pt, **files}.items()
            },
        }
        (work / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def _tokenizer_tables(files: dict[str, Path], settings: RobertaSettings) -> tuple[dict[str, int], list[str]]:
    """The tokenizer's vocabulary (GPT-2 tokens to fairseq ids) and BPE merges, checked against
    the model: every symbol the dictionary gives has an embedding, every token BPE can output an id."""
    symbols = read_dictionary(files["dict.txt"])
    if len(symbols) != settings.vocab_size:
        raise EncoderError(
            f"{files['dict.txt']} gives {len(symbols)} symbols (with <s> <pad> </s> <unk> and "
            f"<mask>) where the checkpoint has {settings.vocab_size} embeddings: not this model's dictionary"
        )
    try:
        encoder = json.loads(files["encoder.json"].read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise EncoderError(f"{files['encoder.json']}: not JSON ({err})") from None
    if not isinstance(encoder, dict):
        raise EncoderError(f"{files['encoder.json']}: not a token -> id mapping")
    vocab = compose_vocab(encoder, symbols)
    merges = read_merges(files["vocab.bpe"])
    # BPE reaches single bytes and what merges build; the dictionary must hold all of them
    # (a GPT-2 token that BPE never outputs, like <|endoftext|>, may be absent).
    reachable = {t for t in encoder if len(t) == 1} | {a + b for a, b in (m.split(" ") for m in merges)}
    lacking = sorted(t for t in reachable if t not in vocab)
    if lacking:
        raise EncoderError(
            f"{files['dict.txt']} lacks {len(lacking)} GPT-2 tokens that BPE can output "
            f"(e.g. {lacking[0]!r} = GPT-2 id {encoder.get(lacking[0])}): not this BPE's dictionary"
        )
    return vocab, merges


def command_line(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ksr.extract.encoders.roberta_fairseq",
        description="Convert a fairseq RoBERTa checkpoint (roberta.large's model.pt) into a "
        "transformers folder that ksr loads as hf:<folder>.",
    )
    parser.add_argument("model_pt", help="fairseq checkpoint (model.pt)")
    parser.add_argument("out_dir", help="folder to write (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--dict", dest="dict_txt", help="the model's dict.txt (default: next to model.pt)")
    parser.add_argument("--encoder-json", help="GPT-2 encoder.json (default: next to model.pt)")
    parser.add_argument("--vocab-bpe", help="GPT-2 vocab.bpe (default: next to model.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    args = parser.parse_args(argv)
    try:
        out = convert_fairseq_roberta(
            args.model_pt,
            args.out_dir,
            dict_txt=args.dict_txt,
            encoder_json=args.encoder_json,
            vocab_bpe=args.vocab_bpe,
            overwrite=args.overwrite,
        )
    except EncoderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}; use it as hf:{out}@layer=-1")
    return 0


if __name__ == "__main__":
    sys.exit(command_line())
