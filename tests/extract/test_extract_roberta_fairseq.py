"""fairseq RoBERTa checkpoints converted to transformers folders (``roberta_fairseq``).

Without fairseq: tiny random checkpoints written under fairseq's key names (0.10+ and the
``decoder.`` / ``emb_layer_norm`` names of the 2019 release) with a synthetic GPT-2 BPE (trained
here with ``tokenizers``: ``encoder.json``, ``vocab.bpe``) and a shuffled ``dict.txt``; the key
mapping is checked key by key and both ways, the converted folder is loaded through ``hf:``, its
token ids are checked against the two-step composition (GPT-2 ids, then the dictionary) and its
features against a plain reimplementation of fairseq's RoBERTa forward written here.

With fairseq (skipped when ``import fairseq`` fails; ``tools/fairseq_parity.sh`` builds an
environment where it does and sets KSR_REQUIRE_FAIRSEQ=1 so that a broken install fails): a
small fairseq ``RobertaModel`` with random weights is saved as fairseq saves ({"args", "model"}),
loaded by fairseq's own ``RobertaModel.from_pretrained`` with the synthetic BPE files, and
``roberta.encode`` + ``extract_features`` (last layer, and inner layers through
``return_all_hiddens``) compared with ksr's ``hf:`` encoder on the converted folder: same token
ids, features within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ksr.extract.encoders import EncoderError, load_encoder
from ksr.extract.encoders.roberta_fairseq import (
    PROVENANCE,
    command_line,
    compose_vocab,
    convert_fairseq_roberta,
    from_hf_keys,
    read_dictionary,
    read_merges,
    read_settings,
    to_hf_keys,
)
from ksr.extract.encoders.tiny import TINY_TEXT

SEED = 20191029
DIM, HEADS, FFN, LAYERS, MAX_POS = 32, 4, 48, 3, 64
TEXTS = [
    "Excuse me. Do you have your forms?",
    "I can't believe you did that!",
    "Zebras quietly juggle 42 xylophones, don't they?",  # words the BPE never saw: short pieces
    "ok",
]


# --------------------------------------------------------------------------------------------
# Synthetic fairseq files


def write_bpe(folder: Path, drop: int = 0) -> tuple[dict[str, int], list[str]]:
    """GPT-2-style ``encoder.json`` + ``vocab.bpe`` (a byte-level BPE trained on TINY_TEXT, plus
    ``<|endoftext|>`` last as in GPT-2) and a ``dict.txt`` listing the GPT-2 ids in a shuffled
    order with three ``madeupword`` entries, as RoBERTa's does. ``drop``: leave out that many
    GPT-2 ids from dict.txt (the merge-built ones, to test the refusal)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TINY_TEXT.splitlines(), vocab_size=400, min_frequency=1, show_progress=False)
    model = json.loads(bpe._tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    encoder = dict(model["vocab"])
    encoder["<|endoftext|>"] = len(encoder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder.json").write_text(json.dumps(encoder))
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    ids = list(encoder.values())
    random.Random(SEED).shuffle(ids)
    if drop:
        built = {encoder[a + b] for a, b in (m.split(" ") for m in merges)}
        ids = [i for i in ids if i not in set(sorted(built)[:drop])]
    lines = [f"{i} {1000 - n}" for n, i in enumerate(ids)] + [f"madeupword000{k} 0" for k in range(3)]
    (folder / "dict.txt").write_text("\n".join(lines) + "\n")
    return encoder, merges


def vocab_size(folder: Path) -> int:
    return len(read_dictionary(folder / "dict.txt"))


def roberta_args(**changes) -> argparse.Namespace:
    """Settings as fairseq 0.x saved a RoBERTa's ``args`` (a small one)."""
    args = dict(
        arch="roberta_base",
        task="masked_lm",
        criterion="masked_lm",
        encoder_layers=LAYERS,
        encoder_embed_dim=DIM,
        encoder_ffn_embed_dim=FFN,
        encoder_attention_heads=HEADS,
        activation_fn="gelu",
        pooler_activation_fn="tanh",
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        pooler_dropout=0.0,
        encoder_layerdrop=0.0,
        max_positions=MAX_POS,
        tokens_per_sample=MAX_POS,
        untie_weights_roberta=False,
        spectral_norm_classification_head=False,
    )
    args.update(changes)
    return argparse.Namespace(**args)


def random_state(vocab: int, *, old_names: bool = False, seed: int = SEED) -> dict[str, torch.Tensor]:
    """A fairseq RobertaModel state dict (encoder + LM head) with non-trivial random values."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    p = "decoder.sentence_encoder." if old_names else "encoder.sentence_encoder."
    ln = "emb_layer_norm" if old_names else "layernorm_embedding"
    s = {
        p + "embed_tokens.weight": rnd(vocab, DIM, scale=0.5),
        p + "embed_positions.weight": rnd(MAX_POS + 2, DIM, scale=0.5),
        p + f"{ln}.weight": rnd(DIM, offset=1.0),
        p + f"{ln}.bias": rnd(DIM),
    }
    for i in range(LAYERS):
        q = f"{p}layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[f"{q}self_attn.{name}.weight"] = rnd(DIM, DIM)
            s[f"{q}self_attn.{name}.bias"] = rnd(DIM)
        s[q + "fc1.weight"], s[q + "fc1.bias"] = rnd(FFN, DIM), rnd(FFN)
        s[q + "fc2.weight"], s[q + "fc2.bias"] = rnd(DIM, FFN), rnd(DIM)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            s[f"{q}{norm}.weight"], s[f"{q}{norm}.bias"] = rnd(DIM, offset=1.0), rnd(DIM)
    h = "decoder.lm_head." if old_names else "encoder.lm_head."
    s[h + "dense.weight"], s[h + "dense.bias"] = rnd(DIM, DIM), rnd(DIM)
    s[h + "layer_norm.weight"], s[h + "layer_norm.bias"] = rnd(DIM), rnd(DIM)
    s[h + "weight"], s[h + "bias"] = s[p + "embed_tokens.weight"], rnd(vocab)
    s[p.replace("sentence_encoder.", "sentence_encoder.version")] = torch.tensor([2.0])
    return s


def fairseq_reference(state: dict[str, torch.Tensor], tokens: torch.Tensor, layer: int = LAYERS) -> torch.Tensor:
    """fairseq's RoBERTa encoder forward written from its definition, for one unpadded sequence:
    token + learned position embeddings (positions padding_idx + 1, + 2, ...), a layer norm, then
    post-norm layers: x = LN(x + MHA(x)); x = LN(x + fc2(gelu(fc1(x)))); q scaled by
    head_dim ** -0.5 after its projection. ``layer``: 0 is the embeddings' output."""
    p = next(k for k in state if k.endswith("embed_tokens.weight")).rsplit("embed_tokens.", 1)[0]
    ln = "emb_layer_norm" if p + "emb_layer_norm.weight" in state else "layernorm_embedding"

    def norm(x, name):
        return F.layer_norm(x, (DIM,), state[name + ".weight"], state[name + ".bias"], eps=1e-5)

    def linear(x, name):
        return x @ state[name + ".weight"].T + state[name + ".bias"]

    n = tokens.shape[0]
    positions = torch.arange(n) + 2  # padding_idx 1, no padding in the sequence
    x = state[p + "embed_tokens.weight"][tokens] + state[p + "embed_positions.weight"][positions]
    x = norm(x, p + ln)
    hd = DIM // HEADS
    for i in range(layer):
        q_ = f"{p}layers.{i}."
        q = linear(x, q_ + "self_attn.q_proj") * hd**-0.5
        k = linear(x, q_ + "self_attn.k_proj")
        v = linear(x, q_ + "self_attn.v_proj")
        q, k, v = (t.view(n, HEADS, hd).transpose(0, 1) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
        a = linear(attn.transpose(0, 1).reshape(n, DIM), q_ + "self_attn.out_proj")
        x = norm(x + a, q_ + "self_attn_layer_norm")
        f = linear(F.gelu(linear(x, q_ + "fc1")), q_ + "fc2")
        x = norm(x + f, q_ + "final_layer_norm")
    return x


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A fake roberta release folder: model.pt (0.10+ key names), dict.txt, encoder.json,
    vocab.bpe; returns (folder, encoder, fairseq state)."""
    folder = tmp_path_factory.mktemp("roberta")
    encoder, _ = write_bpe(folder)
    state = random_state(vocab_size(folder))
    torch.save({"args": roberta_args(), "model": state}, folder / "model.pt")
    return folder, encoder, state


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    folder, _, _ = release
    out = tmp_path_factory.mktemp("conv") / "roberta-hf"
    convert_fairseq_roberta(folder / "model.pt", out)
    return out


def hf_keys_expected() -> set[str]:
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(
        vocab_size=10,
        hidden_size=DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=MAX_POS + 2,
        type_vocab_size=1,
    )
    return {k for k in RobertaModel(config, add_pooling_layer=False).state_dict() if not k.endswith("position_ids")}


# --------------------------------------------------------------------------------------------
# Key mapping and settings (no fairseq)


def test_every_weight_is_mapped_and_the_mapping_inverts():
    state = random_state(50)
    hf = to_hf_keys(state)
    assert set(hf) == hf_keys_expected()
    assert torch.equal(
        hf["encoder.layer.2.attention.self.key.weight"],
        state["encoder.sentence_encoder.layers.2.self_attn.k_proj.weight"],
    )
    assert torch.equal(hf["encoder.layer.1.output.dense.weight"], state["encoder.sentence_encoder.layers.1.fc2.weight"])
    assert torch.equal(hf["embeddings.LayerNorm.bias"], state["encoder.sentence_encoder.layernorm_embedding.bias"])
    assert hf["embeddings.token_type_embeddings.weight"].abs().max() == 0
    back = from_hf_keys(hf)
    encoder_only = {
        k: v for k, v in state.items() if k.startswith("encoder.sentence_encoder.") and not k.endswith(".version")
    }
    assert set(back) == set(encoder_only)
    assert all(torch.equal(back[k], encoder_only[k]) for k in back)
    assert to_hf_keys(back).keys() == hf.keys()


def test_release_names_and_fused_projections_give_the_same_weights():
    """The 2019 release's names (decoder.*, emb_layer_norm) and the very old fused in_proj."""
    new, old = random_state(50), random_state(50, old_names=True)
    assert all(torch.equal(a, b) for a, b in zip(to_hf_keys(new).values(), to_hf_keys(old).values(), strict=True))
    fused = dict(old)
    for i in range(LAYERS):
        q = f"decoder.sentence_encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [fused.pop(f"{q}{n}_proj.{kind}") for n in ("q", "k", "v")]
            fused[f"{q}in_proj_{kind}"] = torch.cat(parts)
    ref, got = to_hf_keys(old), to_hf_keys(fused)
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def test_unknown_or_missing_weights_are_refused():
    state = random_state(50)
    with pytest.raises(EncoderError, match=r"does not have: encoder\.sentence_encoder\.layers\.0\.extra"):
        to_hf_keys(dict(state, **{"encoder.sentence_encoder.layers.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(EncoderError, match=r"does not have: something\.else"):
        to_hf_keys(dict(state, **{"something.else": torch.zeros(2)}))
    both = dict(state, **{"decoder.sentence_encoder.embed_tokens.weight": torch.zeros(2, 2)})
    with pytest.raises(EncoderError, match="found both"):
        to_hf_keys(both)
    with pytest.raises(EncoderError, match="found none"):
        to_hf_keys({"model.w": torch.zeros(1)})


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"encoder_normalize_before": True}, "encoder_normalize_before=True"),
        ({"no_scale_embedding": False}, "no_scale_embedding=False"),
        ({"encoder_learned_pos": False}, "encoder_learned_pos=False"),
        ({"layernorm_embedding": False}, "layernorm_embedding=False"),
        ({"activation_fn": "tanh"}, "activation_fn='tanh'"),
        ({"encoder_layers_to_keep": "0,2"}, "encoder_layers_to_keep='0,2'"),
        ({"arch": "transformer_lm"}, "arch 'transformer_lm'"),
        ({"arch": "roberta_prenorm"}, "arch 'roberta_prenorm'"),
        ({"arch": "xlm"}, "arch 'xlm'"),
        ({"encoder_attention_heads": 5}, "encoder_attention_heads=5 does not divide"),
    ],
)
def test_settings_robertamodel_computes_otherwise_are_refused(changes, named):
    with pytest.raises(EncoderError, match=named):
        read_settings(roberta_args(**changes), random_state(50))


def test_settings_come_from_the_weights_and_args():
    s = read_settings(roberta_args(), random_state(50))
    assert (s.vocab_size, s.hidden_size, s.num_hidden_layers, s.intermediate_size) == (50, DIM, LAYERS, FFN)
    assert (s.num_attention_heads, s.max_position_embeddings, s.max_tokens, s.hidden_act) == (
        HEADS,
        MAX_POS + 2,
        MAX_POS,
        "gelu",
    )
    assert read_settings(roberta_args(activation_fn="gelu_accurate"), random_state(50)).hidden_act == "gelu_new"
    # heads from the architecture's default when absent (roberta_large: 16)
    args = roberta_args(arch="roberta_large")
    del args.encoder_attention_heads
    assert read_settings(args, random_state(50)).num_attention_heads == 16
    cfg_model = {**vars(roberta_args()), "_name": "roberta"}  # a newer fairseq cfg["model"]
    del cfg_model["arch"]
    assert read_settings(cfg_model, random_state(50)) == s


# --------------------------------------------------------------------------------------------
# Tokenizer files (no fairseq)


def test_dictionary_and_merges_are_read_as_fairseq_reads_them(tmp_path):
    (tmp_path / "dict.txt").write_text("13 99\n262 98\nmadeupword0000 0\n13 5 #fairseq:overwrite\n")
    symbols = read_dictionary(tmp_path / "dict.txt")
    # the flagged repeat takes a new index (fairseq encodes "13" to it); <mask> comes last
    assert symbols == ["<s>", "<pad>", "</s>", "<unk>", "13", "262", "madeupword0000", "13", "<mask>"]
    (tmp_path / "bad.txt").write_text("13 99\n13 98\n")
    with pytest.raises(EncoderError, match="line 2: duplicate symbol '13'"):
        read_dictionary(tmp_path / "bad.txt")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nh e\n")
    assert read_merges(tmp_path / "vocab.bpe") == ["Ġ t", "h e"]
    # fairseq skips the first line whatever it holds
    (tmp_path / "v2.bpe").write_text("Ġ t\nh e\n")
    assert read_merges(tmp_path / "v2.bpe") == ["h e"]
    (tmp_path / "blank.txt").write_text("13 99\n\n262 98\n")
    with pytest.raises(EncoderError, match="line 2: expected"):
        read_dictionary(tmp_path / "blank.txt")  # fairseq fails on it too
    vocab = compose_vocab({"!": 0, "Ġt": 13, "he": 262, "<|endoftext|>": 3}, symbols)
    assert vocab == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "Ġt": 7, "he": 5, "madeupword0000": 6, "<mask>": 8}
    (tmp_path / "spaced.bpe").write_text("#version: 0.2\nĠ  t\n")
    assert read_merges(tmp_path / "spaced.bpe") == ["Ġ t"]  # split on any whitespace, as fairseq


def test_converted_tokenizer_gives_fairseq_ids(release, converted):
    """Text -> GPT-2 ids (a plain tokenizer over encoder.json, ids as GPT-2's) -> dictionary
    index, with <s> ... </s> around, as fairseq's roberta.encode does."""
    from transformers import RobertaTokenizer

    folder, encoder, _ = release
    gpt2 = RobertaTokenizer(
        vocab=encoder, merges=[tuple(m.split(" ")) for m in read_merges(folder / "vocab.bpe")], add_prefix_space=False
    )
    index = {s: i for i, s in enumerate(read_dictionary(folder / "dict.txt"))}
    enc = load_encoder(f"hf:{converted}@layer=-1", device="cpu")
    for text in [*TEXTS, "  two  spaces", "émotion ✓ 😀"]:
        pieces = gpt2(text, add_special_tokens=False)["input_ids"]
        want = [0] + [index[str(i)] for i in pieces] + [2]
        assert enc.tokenizer(text)["input_ids"] == want, text
    assert enc.max_tokens == MAX_POS
    provenance = json.loads((converted / PROVENANCE).read_text())
    assert set(provenance["sources"]) == {"model.pt", "dict.txt", "encoder.json", "vocab.bpe"}


def test_converted_folder_gives_fairseq_roberta_features(release, converted):
    """Through hf: (batched, padded): every layer equals the plain fairseq forward."""
    _, _, state = release
    for layer in (LAYERS, 1, 0):
        enc = load_encoder(f"hf:{converted}@layer={layer}", device="cpu", dtype=torch.float32)
        feats = enc.encode(TEXTS)
        for text, got in zip(TEXTS, feats, strict=True):
            ids = torch.tensor(enc.tokenizer(text)["input_ids"])
            ref = fairseq_reference(state, ids, layer)
            assert got.shape == ref.shape == (len(ids), DIM)
            assert (got - ref).abs().max().item() <= 1e-5, (layer, text)


def test_converted_config_is_fairseqs_arithmetic(converted):
    """What transformers would otherwise default differently: layer-norm eps (fairseq 1e-5,
    RobertaConfig 1e-12), one token type (zeros), the padding index that positions count from."""
    config = json.loads((converted / "config.json").read_text())
    assert config["layer_norm_eps"] == 1e-5 and config["type_vocab_size"] == 1
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (1, 0, 2)
    assert (config["hidden_act"], config["max_position_embeddings"]) == ("gelu", MAX_POS + 2)
    assert config["model_type"] == "roberta" and config.get("position_embedding_type", "absolute") == "absolute"


def test_release_key_names_convert_to_the_same_folder(release, converted, tmp_path):
    """The 2019 release's names (decoder.*, emb_layer_norm) give the same weights and features."""
    folder, _, state = release
    old = {
        k.replace("encoder.", "decoder.", 1).replace("layernorm_embedding", "emb_layer_norm"): v
        for k, v in state.items()
    }
    torch.save({"args": roberta_args(), "model": old}, tmp_path / "model.pt")
    for name in ("dict.txt", "encoder.json", "vocab.bpe"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    out = convert_fairseq_roberta(tmp_path / "model.pt", tmp_path / "out")
    a = load_encoder(f"hf:{out}", device="cpu").encode(TEXTS)
    b = load_encoder(f"hf:{converted}", device="cpu").encode(TEXTS)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_conversion_refusals(release, tmp_path):
    folder, _, state = release
    with pytest.raises(EncoderError, match="RoBERTa checkpoint not found"):
        convert_fairseq_roberta(tmp_path / "absent.pt", tmp_path / "o")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.pt").write_bytes((folder / "model.pt").read_bytes())
    with pytest.raises(EncoderError, match=r"missing dict\.txt .*encoder\.json .*vocab\.bpe"):
        convert_fairseq_roberta(lonely / "model.pt", tmp_path / "o")
    # a dictionary of another size
    small = tmp_path / "small.txt"
    small.write_text("\n".join((folder / "dict.txt").read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(EncoderError, match="embeddings: not this model's dictionary"):
        convert_fairseq_roberta(folder / "model.pt", tmp_path / "o", dict_txt=small)
    # a dictionary without tokens BPE builds
    short = tmp_path / "short"
    write_bpe(short, drop=3)
    torch.save({"args": roberta_args(), "model": random_state(vocab_size(short))}, short / "model.pt")
    with pytest.raises(EncoderError, match="lacks 3 GPT-2 tokens that BPE can output"):
        convert_fairseq_roberta(short / "model.pt", tmp_path / "o")
    # an existing folder is kept unless asked
    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("mine")
    with pytest.raises(EncoderError, match="exists and is not empty"):
        convert_fairseq_roberta(folder / "model.pt", out)
    assert (out / "x").read_text() == "mine"
    convert_fairseq_roberta(folder / "model.pt", out, overwrite=True)
    assert not (out / "x").exists() and (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_with_pickled_code_are_refused(release, tmp_path):
    folder, _, state = release
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"args": roberta_args(), "model": state, "extra_state": _Payload(marker)}, path)
    with pytest.raises(EncoderError, match=r"refused to load.*(posix|os)\.system"):
        convert_fairseq_roberta(
            path,
            tmp_path / "o",
            dict_txt=folder / "dict.txt",
            encoder_json=folder / "encoder.json",
            vocab_bpe=folder / "vocab.bpe",
        )
    assert not marker.exists()


def test_command_line(release, tmp_path, capsys):
    folder, _, _ = release
    assert command_line([str(folder / "model.pt"), str(tmp_path / "cli")]) == 0
    assert f"hf:{tmp_path / 'cli'}@layer=-1" in capsys.readouterr().out
    assert command_line([str(tmp_path / "none.pt"), str(tmp_path / "cli2")]) == 1
    assert "RoBERTa checkpoint not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Parity with fairseq itself (its own environment: tools/fairseq_parity.sh)


def _fairseq():
    try:
        import fairseq  # noqa: F401
        from fairseq.models.roberta import RobertaModel
    except Exception as err:  # noqa: BLE001 - any broken install is a skip (or a failure)
        if os.environ.get("KSR_REQUIRE_FAIRSEQ") == "1":
            pytest.fail(f"fairseq is required here but does not import: {err!r}")
        pytest.skip(f"fairseq not installed ({type(err).__name__}); run tools/fairseq_parity.sh")
    return RobertaModel


def _fairseq_release(folder: Path, *, old_names: bool = False):
    """fairseq's RobertaModel built from ``roberta_args()`` with the dictionary in ``folder``,
    given :func:`random_state`'s weights (strictly: same key names as fairseq's own model),
    saved to ``folder/model.pt`` as fairseq 0.x saved it (the args as given, before fairseq's
    architecture fills in defaults), and loaded back by fairseq's hub interface
    (``RobertaModel.from_pretrained``) with the synthetic BPE files: what a user of the paper's
    code runs."""
    import copy
    import types

    RobertaModel = _fairseq()
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(str(folder / "dict.txt"))
    dictionary.add_symbol("<mask>")  # as fairseq's masked_lm task does
    args = roberta_args()
    saved_args = copy.deepcopy(args)
    task = types.SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = RobertaModel.build_model(args, task)
    state = random_state(len(dictionary))
    model.load_state_dict(state, strict=True)  # our synthetic names are fairseq's
    saved = model.state_dict()
    if old_names:  # the 2019 release's names, which fairseq upgrades on load
        saved = {
            k.replace("encoder.", "decoder.", 1).replace("layernorm_embedding", "emb_layer_norm"): v
            for k, v in saved.items()
        }
    training = {  # what fairseq's trainer writes besides args and model (its loader needs it)
        "optimizer_history": [
            {
                "criterion_name": "MaskedLmLoss",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": 1.5},
                "num_updates": 10,
            }
        ],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "val_loss": np.float64(2.5)},
        "last_optimizer_state": None,
    }
    torch.save({"args": saved_args, "model": saved, **training}, folder / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hub = RobertaModel.from_pretrained(
            str(folder),
            checkpoint_file="model.pt",
            data_name_or_path=str(folder),
            bpe="gpt2",
            gpt2_encoder_json=str(folder / "encoder.json"),
            gpt2_vocab_bpe=str(folder / "vocab.bpe"),
        )
    return hub.eval(), state


@pytest.mark.parametrize("names", ["fairseq-0.12", "release-2019"])
def test_matches_fairseq_roberta(tmp_path, names, record_property):
    _fairseq()
    folder = tmp_path / "roberta"
    write_bpe(folder)
    hub, state = _fairseq_release(folder, old_names=names == "release-2019")
    out = convert_fairseq_roberta(folder / "model.pt", tmp_path / "hf")
    texts = [*TEXTS, "  two  spaces", "émotion ✓ 😀"]
    worst = {}
    scale = 0.0
    for layer in (LAYERS, 1, 0):
        enc = load_encoder(f"hf:{out}@layer={layer}", device="cpu", dtype=torch.float32)
        got = enc.encode(texts)  # one padded batch, as ksr extracts
        for text, feats in zip(texts, got, strict=True):
            with torch.inference_mode():
                tokens = hub.encode(text)  # "<s> " + GPT-2 BPE + " </s>", then dict.txt
                assert enc.tokenizer(text)["input_ids"] == tokens.tolist(), text
                if layer == LAYERS:
                    ref = hub.extract_features(tokens)[0]
                else:
                    ref = hub.extract_features(tokens, return_all_hiddens=True)[layer][0]
            assert feats.shape == ref.shape == (len(tokens), DIM)
            worst[layer] = max(worst.get(layer, 0.0), (feats - ref).abs().max().item())
            scale = max(scale, ref.abs().max().item())
        # the plain reference agrees with fairseq too (so the no-fairseq tests check the same thing)
        ids = hub.encode(texts[0])
        with torch.inference_mode():
            ref = hub.extract_features(ids, return_all_hiddens=True)[layer][0]
        assert (fairseq_reference(state, ids, layer) - ref).abs().max().item() <= 1e-5
    figures = ", ".join(f"layer {k}: {v:.3g}" for k, v in worst.items())
    print(f"\nfairseq RoBERTa parity ({names}): max abs diff {figures} (features up to {scale:.3g})")
    record_property(f"max_abs_diff_{names}", max(worst.values()))
    assert max(worst.values()) <= 1e-5


def test_dictionary_reading_agrees_with_fairseq(tmp_path):
    """read_dictionary = fairseq's Dictionary.load + the masked-LM task's add_symbol("<mask>"),
    index by index, a flagged repeat and a dict.txt that already holds <mask> included."""
    _fairseq()
    from fairseq.data import Dictionary

    for text in ("13 99\n262 98\nmadeupword0000 0\n13 5 #fairseq:overwrite\n", "13 9\n<mask> 1\n262 8\n"):
        (tmp_path / "dict.txt").write_text(text)
        d = Dictionary.load(str(tmp_path / "dict.txt"))
        d.add_symbol("<mask>")
        ours = read_dictionary(tmp_path / "dict.txt")
        assert d.symbols == ours
        assert all(d.index(s) == max(i for i, t in enumerate(ours) if t == s) for s in ours)
