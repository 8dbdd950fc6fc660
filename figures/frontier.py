"""
The frontier of steered generation (generate.py): per way of steering, VADER's mean compound score moved (Δ, against
the unsteered model on the same prompts) against the ratio of the unchanged model's perplexity to the unsteered
text's (1 + the rise, on a log axis), one point per strength on the validation prompts joined by a line, and each
way's chosen strength on the test prompts as a star; both with their 95 % bootstrap intervals over prompts
(judging/compare.py). The dashed line is the largest rise the choice allows. Returns the matplotlib Figure
(report.save_figure writes it).
"""

from figures.report import PALETTE


def plot(validation: dict, test: dict, judge: str, max_rise: float, target: str):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.6))
    colours = iter(PALETTE * 3)
    for way, by in validation.items():
        if way == "unsteered":
            continue
        colour = next(colours)
        points = sorted(by.items(), key=lambda kv: kv[1][f"rise/{judge}"])
        x = [1 + m[f"rise/{judge}"] for _, m in points]
        y = [m["delta_compound"] for _, m in points]
        xerr = [[m[f"rise/{judge}"] - m[f"rise_ci/{judge}"][0] for _, m in points],
                [m[f"rise_ci/{judge}"][1] - m[f"rise/{judge}"] for _, m in points]]
        yerr = [[m["delta_compound"] - m["delta_compound_ci"][0] for _, m in points],
                [m["delta_compound_ci"][1] - m["delta_compound"] for _, m in points]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=colour, marker="o", ms=4, lw=1, capsize=2,
                    label=f"{way} (validation)")
        for (s, _), xi, yi in zip(points, x, y, strict=True):
            ax.annotate(s if len(s) <= 6 else "", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for s, m in test.get(way, {}).items():
            ax.errorbar([1 + m[f"rise/{judge}"]], [m["delta_compound"]],
                        xerr=[[m[f"rise/{judge}"] - m[f"rise_ci/{judge}"][0]],
                              [m[f"rise_ci/{judge}"][1] - m[f"rise/{judge}"]]],
                        yerr=[[m["delta_compound"] - m["delta_compound_ci"][0]],
                              [m["delta_compound_ci"][1] - m["delta_compound"]]],
                        color=colour, marker="*", ms=12, lw=1.5, capsize=3, label=f"{way} at {s[:20]} (test)")
    ax.axvline(1 + max_rise, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel(f"perplexity under {judge} (unchanged) / the unsteered text's, log scale")
    ax.set_ylabel(f"Δ mean VADER compound (toward {target}: {'up' if target == 'positive' else 'down'})")
    ax.set_title("steered generation: sentiment moved against fluency lost")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
