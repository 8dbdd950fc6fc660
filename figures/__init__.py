"""Figures: the PNGs a run writes (heatmaps, the knockout check, sweep curves), as matplotlib Figures a notebook can
show too."""
