"""The V-NIAH heatmap: haystack length (x) by needle depth (y), colour = accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_heatmap(path, grid, lengths, depths, *, title: str = "V-NIAH") -> Path:
    """Writes a PNG of ``grid`` ``[len(depths), len(lengths)]`` (accuracy in [0, 1], NaN = no trial)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.asarray(grid, np.float64)
    if grid.shape != (len(depths), len(lengths)):
        raise ValueError(f"grid has shape {grid.shape}, expected (depths, lengths) = ({len(depths)}, {len(lengths)})")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(lengths) + 2), max(3.0, 0.45 * len(depths) + 1.5)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("haystack length (frames)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
