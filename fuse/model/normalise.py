"""Input normalisation: per-dimension standardisation of the features with the training fold's
statistics inside the model (``input_norm="standardize"``), and per-speaker (or per-session)
standardisation of the audio features with each group's own statistics, in a view of the cache
(``speaker_norm``).

Frozen encoders give features whose dimensions differ in scale by orders of magnitude; the
public code feeds them as they are (its stacks' LayerNorms normalise each frame across its
dimensions, not each dimension across frames). With this option the model stores the mean and
standard deviation of every dimension over the true frames of its training utterances, and
standardises its inputs with them; padded positions stay zero.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import torch
from torch import Tensor, nn

from ...cache.reader import BatchLoader


class InputStandardizer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        z = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return z if padding_mask is None else z.masked_fill(padding_mask.unsqueeze(-1), 0.0)


def standardizers(model: nn.Module) -> dict[str, InputStandardizer]:
    """{"audio": ..., "text": ...}: the model's standardizers (none without the option)."""
    return {
        name: getattr(model, f"{name}_input_norm")
        for name in ("audio", "text")
        if isinstance(getattr(model, f"{name}_input_norm", None), InputStandardizer)
    }


@torch.no_grad()
def fit_standardizers(model: nn.Module, cache, indices: np.ndarray, batch_size: int = 256) -> None:
    """Set the model's standardizers from the true frames of the cache utterances ``indices``
    (float64 sums, so the statistics do not depend on the batch size)."""
    found = standardizers(model)
    if not found:
        return
    sums: dict[str, list] = {name: [0.0, 0.0, 0.0] for name in found}  # count, sum, sum of squares
    for batch in cache.loader(indices, batch_size=batch_size):
        for name in found:
            x = (batch.audio if name == "audio" else batch.text).double()
            keep = ~(batch.audio_padding_mask if name == "audio" else batch.text_padding_mask)
            rows = x[keep]
            sums[name][0] += rows.shape[0]
            sums[name][1] = sums[name][1] + rows.sum(dim=0)
            sums[name][2] = sums[name][2] + (rows**2).sum(dim=0)
    for name, (n, s, ss) in sums.items():
        mean = s / max(n, 1)
        std = (ss / max(n, 1) - mean**2).clamp_min(0).sqrt()
        std[std < 1e-8] = 1.0  # a constant dimension is left as it is
        found[name].mean.copy_(mean)
        found[name].std.copy_(std)


# --- per-speaker (or per-session) normalisation: speaker_norm="speaker" | "session" ----------------
#
# Statistics come from each group's own utterances (its true audio frames, labels never used), so
# a test speaker is normalised with its own statistics just as a training speaker is: the shift
# between voices is taken out before the model and the probe see the features. They live outside
# the model (a model sees one utterance, not its speaker), in a view of the cache.

_GROUP_STATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def group_names(cache, by: str) -> np.ndarray:
    """Each utterance's normalisation group: its speaker, its session, or itself ("utterance":
    what prediction uses when it knows no speakers)."""
    if by not in ("speaker", "session", "utterance"):
        raise ValueError(f"speaker_norm groups by speaker, session or utterance, got {by!r}")
    column = {"speaker": cache.speakers, "session": cache.sessions, "utterance": cache.ids}[by]
    return np.asarray([str(g) for g in column])


@torch.no_grad()
def group_statistics(cache, by: str, batch_size: int = 256) -> tuple[np.ndarray, Tensor, Tensor]:
    """(each utterance's group number, per-group mean and std of the audio dimensions over the
    group's true frames), float64 sums; computed once per open cache and grouping."""
    memo = _GROUP_STATS.setdefault(cache, {})
    if by in memo:
        return memo[by]
    _, group_of = np.unique(group_names(cache, by), return_inverse=True)
    groups = int(group_of.max()) + 1 if len(group_of) else 0
    dim = cache.meta.audio_dim
    count = torch.zeros(groups, dtype=torch.float64)
    total = torch.zeros(groups, dim, dtype=torch.float64)
    squares = torch.zeros(groups, dim, dtype=torch.float64)
    for batch in cache.loader(None, batch_size=batch_size):
        keep = ~batch.audio_padding_mask.cpu()
        rows = batch.audio.cpu().double()[keep]
        where = torch.as_tensor(group_of[batch.indices.cpu().numpy()]).repeat_interleave(keep.sum(dim=1))
        count.index_add_(0, where, torch.ones(len(where), dtype=torch.float64))
        total.index_add_(0, where, rows)
        squares.index_add_(0, where, rows**2)
    mean = total / count.clamp_min(1)[:, None]
    std = (squares / count.clamp_min(1)[:, None] - mean**2).clamp_min(0).sqrt()
    std[std < 1e-8] = 1.0  # a constant dimension is left as it is
    memo[by] = (group_of, mean.float(), std.float())
    return memo[by]


def normalise_rows(audio: Tensor, padding_mask: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``audio`` (B, T, D) standardised with per-row ``mean`` and ``std`` (B, D); padding stays 0."""
    z = (audio - mean[:, None, :].to(audio)) / std[:, None, :].to(audio)
    return z.masked_fill(padding_mask.unsqueeze(-1), 0.0)


def utterance_statistics(audio: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Mean and std of one utterance's true frames (``audio`` (T, D)): what ``ksr predict`` uses
    for a speaker-normalised model when it has nothing but that utterance."""
    rows = audio[:length].double()
    mean = rows.mean(dim=0)
    std = rows.std(dim=0, unbiased=False)
    std[std < 1e-8] = 1.0
    return mean.float(), std.float()


class SpeakerNormalisedCache:
    """A cache whose batches carry audio features standardised with their speaker's (or
    session's) own statistics; everything else is the cache's."""

    def __init__(self, cache, by: str) -> None:
        self.inner, self.by = cache, by
        self.group_of, self.mean, self.std = group_statistics(cache, by)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __repr__(self) -> str:
        return f"{self.inner!r} normalised per {self.by}"

    def normalised(self, b):
        """The batch ``b`` of the underlying cache with its audio standardised per group."""
        g = torch.as_tensor(self.group_of[b.indices.cpu().numpy()])
        audio = normalise_rows(b.audio, b.audio_padding_mask, self.mean[g], self.std[g])
        return dataclasses.replace(b, audio=audio.to(b.audio.dtype))

    def batch(self, indices, dtype: torch.dtype = torch.float32):
        return self.normalised(self.inner.batch(indices, dtype))

    def batches(self, parts, device=None, dtype: torch.dtype = torch.float32, **kwargs):
        """The cache's prefetched batches (``Cache.batches``), each normalised as it is used."""
        for b in self.inner.batches(parts, device, dtype, **kwargs):
            yield self.normalised(b)

    def loader(self, indices=None, batch_size: int = 32, shuffle=False, generator=None, drop_last=False, dtype=None):
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        return BatchLoader(self, idx, batch_size, shuffle, generator, drop_last, dtype or torch.float32)


def normalised_view(cache, cfg):
    """The cache as a model of config ``cfg`` reads it: per speaker or session normalised when
    its ``speaker_norm`` asks for it, else the cache itself."""
    if getattr(cfg, "speaker_norm", "none") == "none":
        return cache
    if isinstance(cache, SpeakerNormalisedCache):
        return cache if cache.by == cfg.speaker_norm else normalised_view(cache.inner, cfg)
    return SpeakerNormalisedCache(cache, cfg.speaker_norm)


def inputs_note(by: str) -> str:
    """What an exported model's caller must do to its audio features (speaker_norm ``by``)."""
    return (
        f"audio features must be standardised per {by} before the model: subtract the mean and divide by the "
        f"standard deviation of each dimension over the true frames of that {by}'s utterances (padding stays 0); "
        f"with one utterance alone, its own frames (what ksr predict does)"
    )


def predict_note(by: str) -> str:
    """Where ``ksr predict``'s statistics come from for a model trained with speaker_norm ``by``."""
    return (
        f"audio standardised with this utterance's own statistics (the model was trained with per-{by} "
        f"statistics; one utterance stands for its {by} here, so a very short one is normalised roughly)"
    )
