"""PNG figures for reports: confusion matrices and learning curves (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ...common import atomic_write  # noqa: E402
from ..train.runs import ReportFiles  # noqa: E402

#: The figure formats ksr writes, chosen by the file name's suffix (none: PNG).
FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_format(path: str | Path) -> str:
    """The format of a figure file by its suffix; an unknown one is refused (ValueError, one line)."""
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"{path}: a figure is written as {', '.join(FIGURE_FORMATS)} (by its suffix), not {suffix!r}")
    return suffix


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    cm = np.asarray(confusion, dtype=float)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # recall per true class
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=120)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{100 * rows[i, j]:.0f}%",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rows[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    atomic_write(path, "wb", lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path


def learning_curves(folds: dict[str, Any], select: str, title: str, path: Path) -> Path:
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(7.5, 3), dpi=120)
    # an attributes-only model's history has no UA: its curve is the mean CCC
    first = next((f["history"][0] for f in folds.values() if f.get("history")), {})
    metric, label = ("ua", "UA %") if f"{select}_ua" in first or not first else ("ccc", "mean CCC x 100")
    for fold, f in folds.items():
        h = f.get("history") or []
        if not h:
            continue
        epochs = [e["epoch"] for e in h]
        (line,) = loss_ax.plot(epochs, [e["train_loss"] for e in h], label=f"fold {fold} train")
        loss_ax.plot(epochs, [e[f"{select}_loss"] for e in h], "--", color=line.get_color())
        metric_ax.plot(epochs, [100 * e[f"{select}_{metric}"] for e in h], color=line.get_color(), label=f"fold {fold}")
        if f.get("selected_epoch") is not None:
            metric_ax.axvline(f["selected_epoch"], color=line.get_color(), alpha=0.3, lw=0.8)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel(f"cross-entropy (solid train, dashed {select})")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel(f"{select} {label}")
    metric_ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    atomic_write(path, "wb", lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path


def plot_report(report: dict[str, Any], files: ReportFiles) -> list[Path]:
    paths = []
    for seed, sr in report["seeds"].items():
        paths.append(
            confusion_figure(
                sr["pooled"]["confusion"],
                report["classes"],
                f"pooled over folds {', '.join(sr['folds'])} (seed {seed})",
                files.figure(f"confusion_seed{seed}"),
            )
        )
        for fold, f in sr["folds"].items():
            paths.append(
                confusion_figure(
                    f["confusion"],
                    report["classes"],
                    f"{'fold ' if fold.isdigit() else ''}{fold}: {f['test_group']}",
                    files.figure(f"confusion_seed{seed}_{'fold' if fold.isdigit() else ''}{fold}"),
                )
            )
        paths.append(
            learning_curves(
                sr["folds"],
                "test" if report["select"] == "test" else "valid",
                f"{report['run']} seed {seed}",
                files.figure(f"curves_seed{seed}"),
            )
        )
    return paths


def attention_figure(
    panels: dict[str, np.ndarray], tokens: list[str], frame_times: np.ndarray, title: str, path: Path
) -> Path:
    """Attention maps between words (rows, top to bottom) and audio frames (columns, in seconds).

    ``panels``: panel title -> (words, frames) array, already averaged over heads and without
    padded positions. Columns or rows that key-sparse attention dropped are exactly zero and
    show as blank stripes.
    """
    frame_times = np.asarray(frame_times, dtype=float)
    step = float(frame_times[1] - frame_times[0]) if len(frame_times) > 1 else 0.01
    extent = (
        frame_times[0] if len(frame_times) else 0.0,
        (frame_times[-1] if len(frame_times) else 0.0) + step,
        len(tokens) - 0.5,
        -0.5,
    )
    height = 0.9 + len(panels) * (0.6 + 0.16 * len(tokens))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, height), dpi=120, squeeze=False)
    for ax, (name, weights) in zip(axes[:, 0], panels.items(), strict=True):
        weights = np.asarray(weights, dtype=float)
        if weights.shape != (len(tokens), len(frame_times)):
            raise ValueError(
                f"panel {name!r}: weights of shape {weights.shape}, expected "
                f"({len(tokens)} words, {len(frame_times)} frames)"
            )
        image = ax.imshow(
            weights,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            extent=extent,
            vmin=0.0,
            vmax=max(float(weights.max()), 1e-12),
        )
        ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
        ax.set_xlabel("audio frame start (s)", fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(name, fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    atomic_write(path, "wb", lambda f: fig.savefig(f, format=figure_format(path)))
    plt.close(fig)
    return Path(path)
