"""Stage 1: from a corpus on disk to encoder features in a cache (``ksr extract``).

Sub-packages:

- ``corpora``: corpus readers, from a release folder to the manifest (IEMOCAP, MSP-Podcast, MELD,
  the demo), and the manifest CSV itself.
- ``asr``: machine transcripts (Whisper), ``ksr transcribe``, word error rates.
- ``encoders``: frozen audio and text encoders chosen by a spec string.

Modules of the extraction loop, in reading order:

- ``pipeline``: ``extract_corpus``, the loop from a manifest to the cache's shards.
- ``plan``: each rank's share and the batches, planned by duration.
- ``audio_errors``: what bad audio raises, and the duration guard's limit.
- ``audio``: audio files -> 16 kHz mono float32 (soundfile, soxr).
- ``media``: audio inside mp4 and other containers (PyAV).
- ``prefetch``: audio read a few batches ahead by a thread.
- ``failures``: one bad item fails alone; a broken model stops the run.
- ``summary``: the errors file and the run's summary.

Heavy dependencies (soundfile, transformers) are imported by the submodules that need them, not
here, so that importing ``ksr.extract.corpora.manifest`` stays cheap.
"""
