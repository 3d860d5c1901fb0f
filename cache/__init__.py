"""ksr.cache: the feature cache, the only door between extraction and training.

Writing (extraction)::

    meta = CacheMeta(corpus="iemocap", classes=("ang", "neu", "hap", "sad"),
                     audio_encoder=EncoderInfo("wav2vec-large", 512, "sha256:...", "aggregator", 100.0),
                     text_encoder=EncoderInfo("roberta-large", 1024, "sha256:...", "24"))
    with CacheWriter(out_dir, meta, tag=f"rank{rank}") as w:
        for utt in todo:
            if utt.id not in w.stored_ids():  # resume
                w.add(utt.id, audio_feats, text_feats, utt.label, speaker=..., session=...)

Reading (training)::

    cache = open_cache(out_dir, mode="auto", expected={"audio_dim": 512, "text_dim": 1024})
    train = cache.select(sessions="5", exclude=True)
    for batch in cache.loader(train, batch_size=32, shuffle=True, generator=g):
        logits = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask)

The schema is documented in docs/cache.md. Modules, in reading order:

- ``schema``: what a cache holds and how its files are named (``CacheMeta``, ``EncoderInfo``).
- ``rows``: the one definition of a row (cut, pad, storage dtype) and its padding mask.
- ``convert``: array helpers shared by the writer and the reader.
- ``shard``: one shard file: writing, checking, hashing, reading rows.
- ``index``: index files and the directory scan.
- ``locks``: which writers are writing a cache right now.
- ``writer``: ``CacheWriter``, one finished shard at a time.
- ``modes``: where the features live while training (``gpu``, ``host``, ``stream``, ``auto``).
- ``prefetch``: the next batches read and copied while the current one computes.
- ``reader``: ``open_cache`` -> ``Cache`` -> batches.
- ``stamps``: shards hashed once and unchanged since, trusted without reading them again.
- ``verify``: ``ksr cache verify``.
- ``repair``: ``ksr cache repair`` (duplicate copies two writers left).
- ``info``: ``ksr cache info``, from the metadata alone.
- ``synthetic``: synthetic caches for tests and benchmarks.
- ``util``: threads over shards and progress bars.
- ``errors``: the cache's exceptions.
"""

from ..common.lazy import lazy_names

# Imported on first use (common/lazy.py): `ksr --help` must not pay for torch.
__getattr__ = lazy_names(
    __name__,
    {
        "CacheError": "errors",
        "CacheMismatchError": "errors",
        "cache_info": "info",
        "format_info": "info",
        "Batch": "reader",
        "BatchLoader": "reader",
        "Cache": "reader",
        "open_cache": "reader",
        "STORAGE_DTYPES": "rows",
        "padding_mask": "rows",
        "row_problem": "rows",
        "stored_row": "rows",
        "SCHEMA_VERSION": "schema",
        "CacheMeta": "schema",
        "EncoderInfo": "schema",
        "check_compatible": "schema",
        "VerifyReport": "verify",
        "verify_cache": "verify",
        "CacheWriter": "writer",
    },
)

__all__ = [
    "SCHEMA_VERSION",
    "Batch",
    "BatchLoader",
    "Cache",
    "CacheError",
    "CacheMeta",
    "CacheMismatchError",
    "CacheWriter",
    "EncoderInfo",
    "VerifyReport",
    "cache_info",
    "check_compatible",
    "format_info",
    "open_cache",
    "verify_cache",
    "STORAGE_DTYPES",
    "padding_mask",
    "row_problem",
    "stored_row",
]
