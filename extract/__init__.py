"""ksr.extract: stage 1, from a corpus on disk to encoder features.

- :mod:`ksr.extract.corpora.manifest`: the manifest CSV (read, validate, write): any corpus.
- :mod:`ksr.extract.corpora.iemocap`: IEMOCAP_full_release -> the 4-class manifest.
- :mod:`ksr.extract.corpora.demo`: the built-in demo corpus (generated speech and transcripts).
- :mod:`ksr.extract.audio`: audio files -> 16 kHz mono float32.
- :mod:`ksr.extract.encoders`: frozen audio and text encoders chosen by a spec string.

Heavy dependencies (soundfile, transformers) are imported by the submodules that need them, not
here, so that importing ``ksr.extract.corpora.manifest`` stays cheap.
"""
