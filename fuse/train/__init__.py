"""Training: recipes, folds, run folders, the loop, checkpoints, metrics.

Modules, in reading order:

- ``recipes``: the named presets of optimiser, schedule and batch.
- ``losses``: the class loss (plain, class-weighted or focal cross-entropy).
- ``sampling``: the order of an epoch's training utterances (shuffled or class-balanced).
- ``folds``: the protocols' splits (which utterances train, validate, test).
- ``runs``: a run folder, its files and layout under every protocol, ``run.json``, resume.
- ``metrics``: WA, UA, macro and weighted F1, confusion matrices, the attributes' CCC.
- ``inference``: a model's pass over cache utterances.
- ``attributes``: the CCC loss, each task's loss and scores, masked (missing) attributes.
- ``checkpoint``: ksr checkpoints (save, load, check).
- ``official``: checkpoints of the public implementation (conversion both ways).
- ``probe``: fitting the linear-probe baseline (scikit-learn).
- ``chance``: chance level: a training loss that does not move, a test score below chance, what to try.
- ``ridge``: the attribute baseline, ridge regression on the probe's pooled features.
- ``training``: the resumable training loop of one fold and seed.

Imports ``ksr.fuse.model``; never ``ksr.fuse.report``.
"""
