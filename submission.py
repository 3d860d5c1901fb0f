"""The files batch prediction writes (``ksr predict --manifest/--folder --format``).

- ``csv`` (default): ``id, label, p_<class>...`` (every class's probability, in the checkpoint's
  class order, 8 decimals), then ``arousal, valence, dominance`` when the models predict
  attributes; one row per predicted utterance, in input order.
- ``msp-podcast``: the MSP-Podcast challenge's files, with the column names of the corpus's
  ``labels_consensus.csv`` (``shared/reference/corpora.md``): OUT holds ``FileName,EmoClass``
  (the audio file's name, e.g. ``MSP-PODCAST_0001_0008.wav``, and the class letter: A angry,
  S sad, H happy, U surprise, F fear, D disgust, C contempt, N neutral); when the models predict
  attributes, ``OUT-stem.attributes.csv`` beside it holds ``FileName,EmoAct,EmoVal,EmoDom``
  (arousal, valence, dominance on the corpus's 1-7 scale, 4 decimals; values beyond it clipped
  to its ends, with a warning); models that learn attributes only write that file as OUT.
- Models of ``--task attributes`` have no trained class outputs: their CSV has no ``label`` and
  ``p_`` columns.

Every file is written atomically: a crash leaves the old file or the new one.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .common import atomic_write
from .extract.corpora.manifest import Utterance
from .extract.corpora.msp_podcast import EMOTIONS
from .fuse.train.inference import Outputs
from .predict import PredictError

FORMATS = ("csv", "msp-podcast")
#: ksr's class name -> MSP-Podcast's EmoClass letter.
MSP_LETTERS = {name: letter for letter, name in EMOTIONS.items()}
#: Attribute name -> its column in MSP-Podcast's labels (and in a challenge's attribute file).
MSP_ATTRIBUTE_COLUMNS = {"arousal": "EmoAct", "activation": "EmoAct", "valence": "EmoVal", "dominance": "EmoDom"}
MSP_SCALE = (1.0, 7.0)
PROB_PREFIX = "p_"


def check_submission(fmt: str, classes: tuple[str, ...] | list[str]) -> None:
    """Refuse, before anything runs, a format the models' classes cannot be written in."""
    if fmt not in FORMATS:
        raise PredictError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "msp-podcast":
        missing = [c for c in classes if c not in MSP_LETTERS]
        if missing:
            known = ", ".join(f"{n}={letter}" for n, letter in MSP_LETTERS.items())
            raise PredictError(
                f"--format msp-podcast: class(es) {', '.join(missing)} have no MSP-Podcast letter (it knows {known})"
            )


def attributes_file(out: Path) -> Path:
    """``sub.csv`` -> ``sub.attributes.csv``: the challenge's attribute file beside the categorical one."""
    return out.with_name(f"{out.stem}.attributes{out.suffix or '.csv'}")


def _write_csv(path: Path, header: list[str], records: list[list[str]]) -> Path:
    def write(f) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(records)

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, "w", write)


def write_batch_output(
    out: Path, fmt: str, rows: list[Utterance], outputs: Outputs, classes: tuple[str, ...] | list[str], say=print
) -> list[Path]:
    """Write ``outputs`` (row ``i`` is utterance ``rows[i]``) in format ``fmt``; the files written."""
    if outputs.probs is None:  # a model of task attributes: its class outputs were never trained
        labels, classes = None, ()
    else:
        labels = [classes[int(i)] for i in np.argmax(outputs.probs, axis=1)] if len(rows) else []
    if fmt == "msp-podcast":
        return write_msp_podcast(out, rows, labels, outputs, say)
    header = ["id", *(["label"] if labels is not None else []), *(PROB_PREFIX + c for c in classes)]
    records = []
    for i, u in enumerate(rows):
        attrs = [] if outputs.attributes is None else [f"{v:.6f}" for v in outputs.attributes[i]]
        probs = [] if labels is None else [labels[i], *(f"{p:.8f}" for p in outputs.probs[i])]
        records.append([u.id, *probs, *attrs])
    return [_write_csv(out, [*header, *outputs.attribute_names], records)]


def write_msp_podcast(
    out: Path, rows: list[Utterance], labels: list[str] | None, outputs: Outputs, say=print
) -> list[Path]:
    """OUT: the categorical file, the attributes' beside it (OUT itself when the models learn no
    classes). Attribute values beyond the 1-7 scale (a regression head may overshoot) are
    clipped to its ends, and ``say`` tells how many."""
    names = [Path(u.audio).name for u in rows]
    seen: dict[str, str] = {}
    for u, name in zip(rows, names, strict=True):
        if name in seen:
            raise PredictError(
                f"--format msp-podcast: {seen[name]} and {u.id} have the same file name {name}; a submission "
                f"names each file once"
            )
        seen[name] = u.id
    files = []
    if labels is not None:
        letters = [[n, MSP_LETTERS[c]] for n, c in zip(names, labels, strict=True)]
        files.append(_write_csv(out, ["FileName", "EmoClass"], letters))
    if outputs.attributes is None:
        attributes_file(out).unlink(missing_ok=True)  # an older run's would not belong to this one
        return files
    unknown = [a for a in outputs.attribute_names if a not in MSP_ATTRIBUTE_COLUMNS]
    if unknown:
        raise PredictError(
            f"--format msp-podcast: attribute(s) {', '.join(unknown)} have no MSP-Podcast column "
            f"(it has {', '.join(MSP_ATTRIBUTE_COLUMNS)})"
        )
    low, high = MSP_SCALE
    values = np.clip(outputs.attributes, low, high)
    clipped = int((values != outputs.attributes).sum())
    if clipped:
        say(f"warning: {clipped} attribute value(s) beyond MSP-Podcast's {low:g}-{high:g} scale clipped to its ends")
    columns = [MSP_ATTRIBUTE_COLUMNS[a] for a in outputs.attribute_names]
    records = [[n, *(f"{v:.4f}" for v in values[i])] for i, n in enumerate(names)]
    files.append(_write_csv(attributes_file(out) if files else out, ["FileName", *columns], records))
    return files
