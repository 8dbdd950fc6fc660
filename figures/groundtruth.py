"""The figure of groundtruth.py: each compiled program's ground truth beside every map of it (one row a program)."""

import matplotlib.pyplot as plt
import torch

from figures.report import save_figure


def grid(maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """{"head": (L, T, nh), "mlp_out": (L, T)} -> (rows, T): per layer its heads, then its MLP; and the row names."""
    rows, names = [], []
    for layer in range(maps["mlp_out"].shape[0]):
        for h in range(maps["head"].shape[2]):
            rows.append(maps["head"][layer, :, h])
            names.append(f"L{layer} head {h}")
        rows.append(maps["mlp_out"][layer])
        names.append(f"L{layer} MLP")
    return torch.stack(rows), names


def plot_maps(first: dict, maps: tuple, path):
    """first: {program: {"truth": map, name: map, ...}}; every map scaled to its own largest value (white 0)."""
    columns = ("truth", *maps)
    fig, axes = plt.subplots(len(first), len(columns), figsize=(1.45 * len(columns), 1.3 * len(first) + 0.6),
                             squeeze=False)
    for i, (program, by_name) in enumerate(first.items()):
        for j, name in enumerate(columns):
            m, rows = grid(by_name[name])
            ax = axes[i, j]
            ax.imshow(m / max(float(m.max()), 1e-12), cmap="Greens" if name == "truth" else "Reds", vmin=0, vmax=1,
                      aspect="auto", interpolation="nearest")
            ax.set_xticks(range(m.shape[1]), ["B", *range(1, m.shape[1])], fontsize=5)
            ax.set_yticks(range(len(rows)), rows if j == 0 else [""] * len(rows), fontsize=5)
            if i == 0:
                ax.set_title(name, fontsize=6)
        axes[i, 0].set_ylabel(program, fontsize=7)
    fig.suptitle("compiled programs: the ground truth (green) and each map (red, scaled to its largest value);"
                 " x: position (B = BOS), y: components", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=130)
