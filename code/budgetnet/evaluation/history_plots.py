"""Training curves from a run's history: loss, accuracy and learning rate, as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

CURVES = {  # file name -> (title, y label, [(history column, legend)])
    "loss_curve.png": ("Loss", "cross-entropy", [("train_loss", "train"), ("val_loss", "val")]),
    "accuracy_curve.png": ("Accuracy", "accuracy", [("train_acc", "train"), ("val_acc", "val")]),
    "lr_curve.png": ("Learning rate (at the end of each epoch)", "learning rate", [("lr", "lr")]),
}


def plot_history(rows: list[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """Write the three curves into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [row["epoch"] + 1 for row in rows]
    written = []
    for name, (heading, ylabel, series) in CURVES.items():
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for column, label in series:
            values = [row.get(column) for row in rows]
            if any(v is not None for v in values):
                ax.plot(
                    epochs,
                    [float("nan") if v is None else v for v in values],
                    label=label,
                    marker="o" if len(rows) < 30 else None,
                )
        ax.set(title=f"{heading} {title}".strip(), xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        written.append(out_dir / name)
    return written
