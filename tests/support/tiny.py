"""Command-line settings of the tiny KS-Transformer the training tests use (fast on 2 cores)."""

TINY_MODEL = ["--layers", "1,1,1", "--heads", "2", "--audio-ffn-dim", "8", "--text-ffn-dim", "8"]
