"""ksr: the Key-Sparse Transformer for multimodal speech emotion recognition.

Two stages joined by one contract: ``ksr.extract`` (frozen encoders -> features) writes
``ksr.cache`` (versioned HDF5 shards), which ``ksr.fuse`` (the fusion model, training,
evaluation) reads. ``ksr.cli`` is the ``ksr`` command.
"""

__version__ = "0.2.0"
