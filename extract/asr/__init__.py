"""Machine transcripts: speech recognition, ``ksr transcribe``, word error rates.

Modules, in reading order:

- ``wer``: word error rate against the human transcripts.
- ``recognizer``: the speech-recognition models (Whisper through transformers).
- ``transcribe``: ``ksr transcribe``, a manifest's audio to an ``asr_text`` column (resumable).
"""
