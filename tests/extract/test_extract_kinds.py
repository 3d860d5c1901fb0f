"""``ksr encoders``: the table lists every kind, and what it says of the built-in ones is what
loading them declares."""

from __future__ import annotations

from click.testing import CliRunner

from ksr.cli import main
from ksr.extract.encoders import load_encoder, register_kind
from ksr.extract.encoders.kinds import KINDS, encoder_kinds
from ksr.extract.encoders.spec import _KIND_OPTIONS, _KINDS, PRESETS


def test_listing_names_every_kind_and_preset():
    out = CliRunner().invoke(main, ["encoders"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["spec", "dims", "frames/s", "what"]
    for prefix in _KINDS:
        assert any(line.startswith(prefix) for line in lines[1:]), prefix
    for name in (*PRESETS, "tiny-audio", "tiny-text", "hf:<Whisper>", "hf:<text model>"):
        assert any(line.startswith(name) for line in lines[1:]), name


def test_a_kind_registered_elsewhere_gets_a_row():
    register_kind("zz-test", lambda spec, **kw: None)
    try:
        assert encoder_kinds()[-1].spec == "zz-test:<...>"
    finally:
        _KINDS.pop("zz-test")
        _KIND_OPTIONS.pop("zz-test")


def test_built_in_rows_say_what_loading_declares(tmp_path):
    rows = {k.spec.split("[")[0]: k for k in KINDS}
    for spec in ("fbank", "tiny-audio", "tiny-text"):
        enc = load_encoder(spec, tiny_root=tmp_path, device="cpu")
        assert rows[spec].dims.split()[0] == str(enc.dim), spec
        rate = "per token" if enc.frame_rate is None else f"{enc.frame_rate:g}"
        assert rows[spec].frame_rate == rate, spec
