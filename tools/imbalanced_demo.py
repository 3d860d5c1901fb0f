"""An imbalanced variant of the demo corpus, for the imbalance study (docs/learning.md, "Imbalanced
classes"): a new manifest beside a demo manifest, with an official split column.

    python tools/imbalanced_demo.py data/demo64/manifest.csv data/demo64/imbalanced.csv

Sessions 1-3 train and session 4 validates, each speaker keeping the first utterances of each
class (manifest order) in the ratio RATIOS (8:4:2:1, neutral the most common, sadness the rarest:
with 64 utterances per speaker, 16:8:4:2); session 5 tests, balanced (all its utterances). Train
on it with ``ksr train --protocol split``. The audio paths stay those of the demo manifest (the
new manifest must sit in the same folder).
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

#: Utterances kept per speaker for each share of RATIOS: the most common class keeps all of its.
RATIOS = {"neu": 8, "hap": 4, "ang": 2, "sad": 1}
SPLIT_OF_SESSION = {"1": "train", "2": "train", "3": "train", "4": "valid", "5": "test"}


def imbalanced_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows kept, each with its ``split``."""
    per_speaker = Counter((r["speaker"], r["label"]) for r in rows)
    most = max(RATIOS.values())
    kept, taken = [], Counter()
    for row in rows:
        split = SPLIT_OF_SESSION[row["session"]]
        key = (row["speaker"], row["label"])
        quota = per_speaker[key] if split == "test" else per_speaker[key] * RATIOS[row["label"]] // most
        if taken[key] < quota:
            taken[key] += 1
            kept.append({**row, "split": split})
    return kept


def main(source: str, out: str) -> None:
    source_path, out_path = Path(source), Path(out)
    if out_path.resolve().parent != source_path.resolve().parent:
        sys.exit("error: write the new manifest into the demo manifest's folder (its audio paths are relative)")
    if out_path.exists():
        sys.exit(f"error: {out_path} exists; remove it first")
    with source_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = imbalanced_rows(rows)
    with out_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0].keys(), "split"])
        writer.writeheader()
        writer.writerows(kept)
    for split in ("train", "valid", "test"):
        counts = Counter(r["label"] for r in kept if r["split"] == split)
        print(f"{split}: " + ", ".join(f"{label} {counts[label]}" for label in RATIOS))
    print(f"wrote {out_path} ({len(kept)} of {len(rows)} utterances)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/imbalanced_demo.py DEMO_MANIFEST OUT_MANIFEST")
    main(sys.argv[1], sys.argv[2])
