"""Figures for reports: 2-D scatter plots against the true mixture and image grids."""

from __future__ import annotations

import numpy as np
import torch


def _figure(figsize, ncols: int = 1):
    """A headless figure with ``ncols`` axes side by side: (fig, ax) for one, (fig, axes) for several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    return fig, axes[0, 0] if ncols == 1 else axes[0]


def image_grid(images: torch.Tensor, ncols: int | None = None, gap: int | None = None,
               scale: int | None = None) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into a uint8 (rows, cols, C) array that reads at a glance: each image
    enlarged ``scale`` times by pixel repetition (nearest neighbour; default: to at least 32 pixels), tiles
    ``gap`` pixels apart (default: an eighth of an enlarged tile) on a mid-grey ground, so neighbouring
    digits never run into each other."""
    x = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    scale = scale or max(1, -(-32 // max(h, w)))
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    h, w = h * scale, w * scale
    gap = max(1, h // 8) if gap is None else gap
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = torch.full((nrows * (h + gap) + gap, ncols * (w + gap) + gap, c), 128, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = gap + r * (h + gap), gap + col * (w + gap)
        grid[top:top + h, left:left + w] = x[i].permute(1, 2, 0)
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
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.axis("off")
    ax.set_title(f"{title}: {len(samples):,} samples")
    fig.tight_layout()
    return fig


def prompt_grid_figure(rows: list[tuple[str, torch.Tensor]], title: str):
    """One row a prompt: its text, then its samples side by side (text-conditioned models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(max(1, len(rows)), 1, figsize=(8, 1.3 * max(1, len(rows)) + 0.4), squeeze=False)
    for ax, (prompt, x) in zip(axes[:, 0], rows):
        grid = image_grid(x, ncols=len(x))
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(prompt if len(prompt) <= 80 else prompt[:77] + "...", fontsize=8, loc="left")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def switch_grid_figure(snapshots: list[tuple[int, str, torch.Tensor]], title: str):
    """One panel per change of target: the EMA generator's samples at that moment."""
    n = max(1, len(snapshots))
    fig, axes = _figure((2.6 * n, 2.8), n)
    for ax, (iteration, target, x) in zip([axes] if n == 1 else axes, snapshots):
        if x.ndim == 2:
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
            ax.set_xlim(-1.6, 1.6)
            ax.set_ylim(-1.6, 1.6)
            ax.set_aspect("equal")
        else:
            grid = image_grid(x[:36])
            ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                      interpolation="nearest")
            ax.axis("off")
        ax.set_title(f"iteration {iteration}\ntarget: {target}", fontsize=8)
    x = snapshots[0][2] if snapshots else torch.zeros(0, 2)
    shown = len(x) if x.ndim == 2 else min(36, len(x))
    fig.suptitle(f"{title}: the EMA generator at each change of target ({shown} samples a panel)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_curves(ax, curves: dict, metric: str, x: str = "iteration", title: str = "") -> None:
    """Quality-vs-``x`` lines (one per name) of history frames holding ``metric``."""
    for name, frame in curves.items():
        if metric not in frame:  # no proxy evaluations in this run (eval_every: 0)
            continue
        rows = frame.dropna(subset=[metric])
        ax.plot(rows[x], rows[metric], marker="o", ms=3, label=name)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(metric)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    ax.set_title(title)


def curves_figure(curves: dict, metric: str, x: str = "iteration", title: str = ""):
    """A figure with :func:`plot_curves`."""
    fig, ax = _figure((6, 4))
    plot_curves(ax, curves, metric, x, title)
    fig.tight_layout()
    return fig


def two_panel_figure():
    """An empty figure with two axes side by side (``fig.axes[0]``, ``fig.axes[1]``)."""
    return _figure((12, 4), 2)[0]
