"""Figures for reports: 2-D scatter plots against the true mixture and image grids."""

from __future__ import annotations

import numpy as np
import torch


def _figure(figsize):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def image_grid(images: torch.Tensor, ncols: int | None = None) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into an (rows*H, cols*W, C) uint8 array."""
    x = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = torch.zeros(nrows * h, ncols * w, c, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = x[i].permute(1, 2, 0)
    return grid.numpy()


def samples_figure(samples: torch.Tensor, title: str, reference: torch.Tensor | None = None):
    """A matplotlib figure of samples: scatter for 2-D data, image grid otherwise."""
    if samples.ndim == 2:
        fig, ax = _figure((5, 5))
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, c="tab:gray", label="data")
        ax.scatter(samples[:, 0].cpu(), samples[:, 1].cpu(), s=2, alpha=0.5, c="tab:blue", label=title)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
    else:
        grid = image_grid(samples)
        fig, ax = _figure((6, 6))
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", interpolation="nearest")
        ax.axis("off")
    ax.set_title(title)
    fig.tight_layout()
    return fig
