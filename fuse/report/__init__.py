"""Reports and what is built on trained runs: evaluation, statistics, comparisons, exports.

Modules, in reading order:

- ``stats``: bootstrap intervals, paired bootstrap, McNemar, tests over seeds (numpy, scipy).
- ``intervals``: what a report keeps of each test utterance, and its intervals.
- ``split_tables``: the split protocol's per-test-split tables.
- ``attribute_report``: a report's attribute CCCs with intervals, beside the ridge baseline.
- ``evaluation``: a run's report (every fold and seed scored on its test utterances).
- ``cross_corpus``: a run's models tested on another corpus's cache (``ksr eval --cache OTHER``).
- ``render``: a report as Markdown, CSV and files on disk.
- ``plots``: confusion matrices and learning curves (matplotlib).
- ``compare``: ``ksr compare``, run against run on the same utterances.
- ``tensorboard``: TensorBoard curves while training.
- ``experiment``: whole experiments (every fold and seed, then the report) and ablations.
- ``export``: ONNX export of a trained model.

Imports ``ksr.fuse.train`` and ``ksr.fuse.model``; nothing below imports this package.
"""
