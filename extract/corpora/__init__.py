"""Corpus readers: from a corpus on disk to the manifest every later step reads.

Modules, in reading order:

- ``manifest``: the manifest CSV (read, validate, write); any corpus becomes usable through it.
- ``attributes``: the numeric attribute columns (activation, valence, dominance), their scales, parsing.
- ``splits``: what the official-split preparers share (split counts, unknown speakers).
- ``iemocap``: IEMOCAP_full_release -> the 4-class manifest.
- ``msp_podcast``: an MSP-Podcast release -> a manifest with its official splits.
- ``meld``: MELD -> a manifest with its official splits (mp4 clips).
- ``demo_voice``: the demo's synthetic voices.
- ``demo``: the built-in demo corpus (generated speech and transcripts).
"""
