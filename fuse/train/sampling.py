"""The order of an epoch's training utterances: shuffled, or class-balanced.

``--sampler`` (a recipe setting, recorded in run.json) is one of :data:`SAMPLERS`:

- ``shuffle``: every training utterance once, in a random order (the default; the public code's).
- ``balanced``: as many draws as there are training utterances (so the same number of steps per
  epoch), each drawn from a class chosen with equal probability: every class present gets
  ``n // K`` or ``n // K + 1`` places in the epoch, and a class's places go to its utterances in
  a fresh random order, cycled as often as needed (a rare class repeats, a common one is
  subsampled; no utterance comes up twice before every one of its class has come up once).

Both draw only from the fold's shuffle generator (``torch.Generator``), whose state the
training state saves: same seed, same epochs, also after ``--resume``.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLERS = ("shuffle", "balanced")


def _permutation(n: int, generator: torch.Generator) -> np.ndarray:
    return torch.randperm(n, generator=generator).numpy()


def shuffled_order(indices: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Every utterance of ``indices`` once, in a random order."""
    return indices[_permutation(len(indices), generator)]


def balanced_order(indices: np.ndarray, labels: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """``len(indices)`` utterances of ``indices`` (whose classes are ``labels``), classes in equal
    shares (within one utterance) and in a random order."""
    indices, labels = np.asarray(indices), np.asarray(labels)
    if len(indices) != len(labels):
        raise ValueError(f"{len(indices)} utterances but {len(labels)} labels")
    classes = np.unique(labels)
    if len(classes) == 0:
        return indices[:0]
    n, k = len(indices), len(classes)
    # Each class's number of places: n // k each, the remainder to classes drawn at random.
    places = np.full(k, n // k)
    places[_permutation(k, generator)[: n % k]] += 1
    chosen = []
    for c, count in zip(classes, places, strict=True):
        members = indices[labels == c]
        rounds = -(-int(count) // len(members))  # ceil: enough passes over the class
        cycled = np.concatenate([members[_permutation(len(members), generator)] for _ in range(rounds)])
        chosen.append(cycled[:count])
    order = np.concatenate(chosen)
    return order[_permutation(n, generator)]
