"""What train.py prints: the methods' metrics side by side, what the selection kept, test prompts with their
top tokens before and after, and greedy continuations without and with the intervention."""

import ascale
import selection


def print_table(results: dict[str, dict], task: str = "", held_out: str = "test") -> None:
    """Methods side by side; cells with two numbers are train / test of `task` (named above the table); held_out
    names what the second number read (evaluate.py --split validation puts the validation prompts there)."""
    rows = [("flip rate", "flip_rate", "{:.2f}"), ("  95% interval (Wilson)", "flip_rate_ci", "[{:.2f}, {:.2f}]"),
            ("  95% interval (groups)", "flip_rate_ci_groups", "[{:.2f}, {:.2f}]"),
            ("balanced flip (mean of the sides)", "balanced_flip", "{:.2f}"),
            ("  95% interval (groups)", "balanced_flip_ci", "[{:.2f}, {:.2f}]"),
            ("prompts", "n_prompts", "{}"), ("logit diff before", "logit_diff_before", "{:+.2f}"),
            ("logit diff after", "logit_diff_after", "{:+.2f}"), ("KL of the other tokens, nats", "kl", "{:.3f}"),
            ("  95% interval (bootstrap)", "kl_ci", "[{:.3f}, {:.3f}]")]

    def cell(value, fmt):
        if value is None:
            return "-"
        return fmt.format(*value) if isinstance(value, list) else fmt.format(value)
    table = [(f"(train / {held_out})", *results)]
    table += [(name, *(f"{cell(m['train'][key], fmt)} / {cell(m['test'][key], fmt)}" if key in m["test"] else "-"
                       for m in results.values())) for name, key, fmt in rows]
    table += [(f"flip on side {s} (preferred answer {s.upper()})", *(
        "{} / {}".format(*(f"{m[split]['sides'][s]['flip_rate']:.2f} of {m[split]['sides'][s]['n_prompts']}"
                           if m[split]["sides"][s]["flip_rate"] is not None else "-" for split in ("train", "test")))
        if "sides" in m["test"] else "-" for m in results.values())) for s in ("a", "b")]
    table += [("parameters", *(f"{m['n_params']:,}" for m in results.values())),
              ("l1 of parameters", *(f"{m['l1']:.2f}" for m in results.values())),
              (f"active locations (>= {ascale.ACTIVE:.0%} change)",
               *(f"{m['n_active']:.1f}" for m in results.values()))]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"\ntask {task}:" if task else "")
    for row in table:
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]))


def print_selection(method: str, chosen: dict) -> None:
    """One or two lines on what the selection kept (selection.py), or the strength DiffMean chose."""
    if method in chosen:                              # a baseline: what it computed
        print(f"{method}: {chosen[method]['summary']}")
    if "selection" in chosen:
        sel = chosen["selection"]
        tried = ", ".join(f"K={r['K']}: {r['flip_rate_select']:.2f}" for r in sel["path"])
        print(f"{method}: kept {sel['K']} of the {sel['unpruned']['units']} active units by {sel['measure']}"
              f" ({sel['rule']}; unpruned flip {sel['unpruned']['select_flip_rate']:.2f}); path, flip on the"
              f" selection prompts after refit: {tried}")
    if "runs" in chosen and chosen["runs"]["fits"]:
        r = chosen["runs"]
        m, sd = r["mean_sd"]["test_flip_rate"]
        print(f"{method}: {r['runs']} bootstrap fits, each pruned to K={r['K']}; {r['selected']} locations kept by"
              f" >= {r['threshold']:.0%} of them; test flip of the fits {m:.2f} ± {sd:.2f} (mean ± sd);"
              f" {selection.describe_agreement(r)}")


def show(model, tok, iv, ps, batch, n: int) -> None:
    """The first n test prompts with their top-5 next tokens before and after the intervention, and the
    probabilities of the target and the other answer (often outside the top 5) before and after."""
    n = min(n, len(ps))
    before = ascale.answer_logits(model, batch.ids[:n], batch.answer_pos[:n]).softmax(-1)
    after = ascale.answer_logits(model, batch.ids[:n], batch.answer_pos[:n],
                                 intervene=ascale.at_slots(iv, batch[:n].slots)).softmax(-1)
    for i in range(n):
        target = tok.token_str(int(batch.answers[i, 0]))
        print(f"\n{ps.prompts[i]!r}\n  correct {ps.correct_str[i]!r}, wrong {ps.wrong_str[i]!r}, target {target!r}")
        for name, p in (("before", before[i]), ("after ", after[i])):
            top = p.topk(5)
            print(f"  {name}: " + "  ".join(f"{tok.token_str(int(t))!r} {float(q):.1%}"
                                           for q, t in zip(top.values, top.indices, strict=True)))
        t, o = batch.answers[i].tolist()
        print("  " + ", ".join(f"{tok.token_str(a)!r} {float(before[i, a]):.2%} -> {float(after[i, a]):.2%}"
                               for a in (t, o)) + " (target, other); logit difference"
              f" {float((before[i, t] / before[i, o]).log()):+.2f} -> {float((after[i, t] / after[i, o]).log()):+.2f}")


def generations(model, tok, ivs: dict, ps, n: int, n_tokens: int) -> None:
    """--generate: the first n test prompts, each continued greedily by n_tokens tokens without the
    intervention and with each of `ivs` (method -> intervention), one under the other. Each prompt
    is generated on its own, so the padding of shorter prompts never enters a continuation; the
    text stops at an end-of-text token."""
    n = min(n, len(ps))
    beta = next(iter(ivs.values())).beta
    print(f"\ngreedy continuations of {n_tokens} tokens, without and with the intervention (beta {beta:g}):")
    rows = {"without": None, **{f"with {method}": iv for method, iv in ivs.items()}}
    width = max(map(len, rows))
    for i in range(n):
        ids = ps.ids[i:i + 1, :int(ps.answer_pos[i]) + 1]               # (1, T): this prompt, no padding
        print(f"\n{ps.prompts[i]!r}")
        for label, iv in rows.items():
            bound = iv if iv is None or ps.slots is None else ascale.at_slots(iv, ps.slots[i:i + 1, :ids.shape[1]])
            new = model.generate(ids, n_tokens, intervene=bound)[0, ids.shape[1]:].tolist()
            if tok.eot_token in new:
                new = new[:new.index(tok.eot_token) + 1]
            print(f"  {label.ljust(width)}: {tok.decode(new)!r}")


def print_gains(results: dict[str, dict]) -> None:
    """Each method against the offset control on the test prompts: its gain in flip and balanced flip with paired
    intervals, McNemar's p for the flips (metrics.gain)."""
    for method, m in results.items():
        g = m.get("gain_over_offset")
        if g and g["balanced_flip"] is not None:
            print(f"{method} over the offset control (test): flip {g['flip']:+.2f} [{g['flip_ci'][0]:+.2f},"
                  f" {g['flip_ci'][1]:+.2f}] (McNemar p {g['mcnemar_p']:.2g}), balanced flip {g['balanced_flip']:+.2f}"
                  f" [{g['balanced_flip_ci'][0]:+.2f}, {g['balanced_flip_ci'][1]:+.2f}]")
