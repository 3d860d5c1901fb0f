"""Numbers both stages agree on."""

#: Every encoder reads 16 kHz mono audio; the cache records the rate it was made at.
SAMPLE_RATE = 16000
#: The paper's fixed lengths: audio cut or zero-padded to 460 frames (4.6 s at 100 frames/s),
#: transcripts to 20 tokens.
MAX_AUDIO_FRAMES = 460
MAX_TEXT_TOKENS = 20
#: The public implementation's class indexes for the 4-class IEMOCAP task (ang 0, neu 1,
#: hap+exc 2, sad 3): a manifest with exactly these labels gets this order, so converted
#: official checkpoints and ksr's caches agree on what each logit means.
PAPER_CLASSES: tuple[str, ...] = ("ang", "neu", "hap", "sad")
