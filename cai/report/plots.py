"""The report's figures (matplotlib, Agg): PNG bytes, each with labelled axes, n and interval bars.

Rates are drawn on a fixed 0..1 axis so a single round is not auto-zoomed into noise.
"""

from __future__ import annotations

import io
from typing import Any

from cai.report.data import RunData, StageView, num
from cai.report.verdict import METRICS, Rate, as_rate, model_rates, series

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return buf.getvalue()


def _label(name: str) -> str:
    return name.replace("-", " ")


def _errbar(ax: Any, x: float, r: Rate, colour: str, label: str | None, marker: str = "o") -> None:
    lo = r.rate - r.low if r.low is not None else 0.0
    hi = r.high - r.rate if r.high is not None else 0.0
    ax.errorbar([x], [r.rate], yerr=[[max(lo, 0)], [max(hi, 0)]], fmt=marker, color=colour, capsize=4,
                markersize=6, label=label)


# --- outcome per round ----------------------------------------------------------------


def outcome_points(run: RunData) -> dict[str, list[tuple[int, Rate]]]:
    """metric key -> [(model round, rate)]: round 0 from the first evaluated round, round k from its own eval."""
    out: dict[str, list[tuple[int, Rate]]] = {key: [] for key, _, _ in METRICS}
    seen: set[int] = set()
    for r in run.rounds:
        if not r.evaluated:
            continue
        for j in ([0] if not seen else []) + [r.k]:
            if j in seen:
                continue
            seen.add(j)
            for key, rate in model_rates(r, f"round-{j}").items():
                if rate is not None and rate.rate is not None:
                    out[key].append((j, rate))
    return out


def plot_outcome(run: RunData) -> bytes | None:
    points = outcome_points(run)
    if not any(points.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    panels = ((axes[0], ("red_team_refusal",), "Harmlessness: red-team prompts refused\n(higher is better)"),
              (axes[1], ("benign_refusal", "benign_look_unsafe_refusal"),
               "Over-refusal: benign prompts refused\n(lower is better)"))
    names = {"red_team_refusal": "red team", "benign_refusal": "all benign",
             "benign_look_unsafe_refusal": "look-unsafe benign"}
    xs_all = sorted({j for pts in points.values() for j, _ in pts})
    for ax, keys, title in panels:
        for i, key in enumerate(keys):
            offset = (i - (len(keys) - 1) / 2) * 0.12
            for n_i, (j, rate) in enumerate(points[key]):
                _errbar(ax, j + offset, rate, COLOURS[i + (0 if key == "red_team_refusal" else 1)],
                        names[key] if n_i == 0 else None, marker="os"[i])
                n = f"{rate.k}/{rate.n}" if rate.k is not None and rate.n is not None else ""
                left = len(keys) > 1 and i == 0  # two series side by side: labels on the outer sides
                ax.annotate(n, (j + offset, rate.rate), textcoords="offset points", xytext=(-7 if left else 7, -3),
                            ha="right" if left else "left", fontsize=7.5, color="#444")
            xs = [j + offset for j, _ in points[key]]
            ys = [rate.rate for _, rate in points[key]]
            if len(xs) > 1:
                ax.plot(xs, ys, color=COLOURS[i + (0 if key == "red_team_refusal" else 1)], alpha=0.4)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlim(min(xs_all) - 0.5, max(xs_all) + 0.5)
        ax.set_xticks(xs_all, [f"round {j}" for j in xs_all])
        ax.set_xlabel("model (round 0 = the starting policy)")
        ax.set_ylabel("refusal rate, 95% interval")
        ax.grid(alpha=0.3)
        if any(points[k] for k in keys):
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _png(fig)


# --- win rates ------------------------------------------------------------------------


def plot_win_rates(run: RunData) -> bytes | None:
    pts: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in run.rounds:
        for label, w in (r.metrics.get("win_rates") or {}).items():
            if isinstance(w, dict) and num(w.get("rate")) is not None:
                kind = "vs round 0" if label == "vs round-0" else "vs the previous round"
                pts.setdefault(kind, []).append((r.k, w))
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.0), dpi=100)
    ks = sorted({k for v in pts.values() for k, _ in v})
    for i, (kind, values) in enumerate(sorted(pts.items())):
        offset = (i - (len(pts) - 1) / 2) * 0.12
        for n_i, (k, w) in enumerate(values):
            r = Rate(num(w["rate"]), num(w.get("ci_low")), num(w.get("ci_high")))
            _errbar(ax, k + offset, r, COLOURS[i], kind if n_i == 0 else None, marker="os"[i % 2])
            ax.annotate(f"{w.get('wins', '?')}W {w.get('losses', '?')}L {w.get('ties', '?')}T\n(n={w.get('n', '?')})",
                        (k + offset, r.rate), textcoords="offset points", xytext=(-8 if i == 0 else 8, -4),
                        ha="right" if i == 0 else "left", va="top", fontsize=7.5, color=COLOURS[i])
    ax.axhline(0.5, color="#888", linestyle="--", linewidth=1)
    ax.text(ks[0] - 0.45, 0.52, "0.5 = no difference", fontsize=7.5, color="#666")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(ks[0] - 0.6, ks[-1] + 0.6)
    ax.set_xticks(ks, [f"round {k}" for k in ks])
    ax.set_xlabel("round's policy")
    ax.set_ylabel("judge win rate, 95% interval\n(a tie counts half)")
    ax.set_title("Constitution judge: this round's answers vs the reference's", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    return _png(fig)


# --- per category ---------------------------------------------------------------------


def category_rates(run: RunData) -> tuple[list[str], dict[str, dict[str, Rate]]]:
    """(categories, model -> category -> rate): round 0 and every round's own policy."""
    per: dict[str, dict[str, Rate]] = {}
    for r in run.rounds:
        out = r.metrics.get("outcome") or {}
        for model in (["round-0"] if "round-0" not in per else []) + [f"round-{r.k}"]:
            cats = (out.get(model) or {}).get("red_team_by_category") or {}
            rates = {c: as_rate(v) for c, v in cats.items()}
            rates = {c: v for c, v in rates.items() if v is not None and v.rate is not None}
            if rates:
                per[model] = rates
    cats = sorted({c for v in per.values() for c in v})
    return cats, per


def plot_categories(run: RunData, max_models: int = 4) -> bytes | None:
    cats, per = category_rates(run)
    if not cats:
        return None
    models = list(per)
    if len(models) > max_models:  # round 0 and the latest rounds
        models = [models[0]] + models[-(max_models - 1):]
    plt = _plt()
    height = max(3.0, 0.3 * len(cats) * max(1.0, len(models) * 0.6) + 1.6)
    fig, ax = plt.subplots(figsize=(8, height), dpi=100)
    bar = 0.8 / len(models)
    for i, model in enumerate(models):
        ys = [c_i + (i - (len(models) - 1) / 2) * bar for c_i in range(len(cats))]
        labelled = False
        for y, c in zip(ys, cats):
            v = per[model].get(c)
            if v is None:
                continue
            lo = v.rate - v.low if v.low is not None else 0
            hi = v.high - v.rate if v.high is not None else 0
            ax.barh(y, v.rate, height=bar * 0.9, color=COLOURS[i], alpha=0.8,
                    xerr=[[max(lo, 0)], [max(hi, 0)]], capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "#333"},
                    label=None if labelled else _label(model))
            ax.plot([v.rate], [y], marker="D", markersize=3.5, color=COLOURS[i])  # visible at 0 too
            labelled = True
    ns = {c: next((per[m][c].n for m in models if c in per[m] and per[m][c].n is not None), None) for c in cats}
    ax.set_yticks(range(len(cats)), [f"{c} (n={ns[c]})" if ns[c] is not None else c for c in cats], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("red-team refusal rate, 95% interval (higher is better)")
    ax.set_title("Red-team refusal by harm category (held-out eval set)", fontsize=10, pad=20)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(models), frameon=False)
    fig.tight_layout()
    return _png(fig)


# --- training curves ------------------------------------------------------------------

#: (panel title, y label, training-log keys (first present wins), eval-log keys)
TRAINING_PANELS = (
    ("loss", "loss", ("loss",), ("eval_loss",)),
    ("pairwise accuracy", "accuracy (chosen ranked higher)", ("accuracy", "rewards/accuracies"), ("eval_accuracy",)),
    ("reward margin", "margin (chosen − rejected)", ("margin", "rewards/margins"), ("eval_margin",)),
    ("reward", "reward-model score", ("objective/scores", "reward"), ()),
    ("KL to reference", "KL (nats, sampled estimate)", ("objective/kl", "kl"), ()),
    ("entropy", "entropy (nats)", ("objective/entropy", "entropy"), ()),
    ("token accuracy", "next-token accuracy", ("mean_token_accuracy",), ()),
    ("policy loss", "policy loss", ("loss/policy_avg",), ()),
)


def training_panels(history: Any, limit: int = 4) -> list[tuple[str, str, list, list]]:
    panels = []
    for title, ylabel, keys, eval_keys in TRAINING_PANELS:
        train = [(x, y) for x, y in series(history, keys) if y is not None]
        ev = [(x, y) for x, y in series(history, eval_keys) if y is not None] if eval_keys else []
        if train or ev:
            panels.append((title, ylabel, train, ev))
        if len(panels) == limit:
            break
    return panels


def plot_training(stages: list[StageView]) -> bytes | None:
    """One stage's training curves, every round overlaid (one colour per round)."""
    from matplotlib.ticker import MaxNLocator

    per = [(s, training_panels(s.training.get("log_history") or [], limit=len(TRAINING_PANELS))) for s in stages]
    titles = []
    for _, panels in per:  # the panels any round has, in TRAINING_PANELS order, at most 4
        titles += [p[0] for p in panels if p[0] not in titles]
    order = [t[0] for t in TRAINING_PANELS]
    titles = sorted(titles, key=order.index)[:4]
    if not titles:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(titles), figsize=(2.9 * len(titles) + 0.6, 3.1), dpi=100, squeeze=False)
    for ax, title in zip(axes[0], titles):
        ylabel, count = "", 0
        for i, (s, panels) in enumerate(per):
            panel = next((p for p in panels if p[0] == title), None)
            if panel is None:
                continue
            _, ylabel, train, ev = panel
            colour, name = COLOURS[i % len(COLOURS)], f"round {s.round}"
            if train:
                xs, ys = zip(*train)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, color=colour, label=name)
            if ev:
                xs, ys = zip(*ev)
                ax.plot(xs, ys, marker="s", markersize=6, linestyle="--", color=colour, markerfacecolor="white",
                        label=f"{name}, held-out")
            count = max(count, len(train) or len(ev))
        ax.set_title(f"{title} (n={count} logged step{'s' if count != 1 else ''})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        steps = [x for line in ax.get_lines() for x in line.get_xdata()]
        if steps and max(steps) - min(steps) < 1:  # one logged step: a readable axis around it
            ax.set_xlim(min(steps) - 1, max(steps) + 1)
            ax.set_xticks(sorted(set(steps)))
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.3)
        if len(per) > 1 or any(p[3] for _, panels in per for p in panels if p[0] == title):
            ax.legend(fontsize=6.5)
    first = stages[0]
    trainer = first.training.get("trainer", first.stage)
    steps = ", ".join(str(s.training.get("steps", "?")) for s in stages)
    rounds = ", ".join(str(s.round) for s in stages)
    fig.suptitle(f"{first.stage}: {trainer} training, round{'s' if len(stages) > 1 else ''} {rounds} "
                 f"(steps: {steps})", fontsize=10)
    fig.tight_layout()
    return _png(fig)


# --- labels ---------------------------------------------------------------------------


def plot_labels(s: StageView, stats: dict[str, Any]) -> bytes | None:
    """Soft-label histogram, and the slot-bias picture: P(first slot wins) in each presentation order."""
    hist = stats.get("label_histogram") or {}
    pairs = s.pairs
    if not hist and not pairs:
        return None
    plt = _plt()
    both = [p for p in pairs if num(p.get("p_second_order")) is not None]
    fig, axes = plt.subplots(1, 2 if pairs else 1, figsize=(10 if pairs else 5.2, 3.9), dpi=100, squeeze=False)
    ax = axes[0][0]
    if hist:
        labels = list(hist)
        counts = [int(hist[b] or 0) for b in labels]
        centres = [i / 10 + 0.05 for i in range(len(labels))]
    else:
        vals = [p["p_chosen"] if p.get("chosen_index") == (p.get("pair") or [None])[0] else 1 - p["p_chosen"]
                for p in pairs if num(p.get("p_chosen")) is not None]
        counts = [0] * 10
        for v in vals:
            counts[min(int(v * 10 + 1e-9), 9)] += 1
        centres = [i / 10 + 0.05 for i in range(10)]
    ax.bar(centres, counts, width=0.095, color=COLOURS[0], alpha=0.85)
    ax.axvline(0.5, color="#888", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("soft label: P(first-sampled response is better)")
    ax.set_ylabel("pairs")
    n = sum(counts)
    ax.set_title(f"{s.name}: judge labels (n={n} pairs)\nmass near 0.5 = the judge cannot tell", fontsize=9.5)
    ax.grid(alpha=0.3)
    if pairs:
        ax = axes[0][1]
        if both:
            # P(slot A wins): order 1 shows chosen in A (p_first_order); order 2 shows it in B (1 - p_second_order).
            xs = [float(p["p_first_order"]) for p in both]
            ys = [1.0 - float(p["p_second_order"]) for p in both]
            colours = [COLOURS[2] if p.get("position_consistent") else COLOURS[1] for p in both]
            ax.scatter(xs, ys, c=colours, s=14, alpha=0.7, edgecolors="none")
            ax.plot([0, 1], [1, 0], color="#555", linestyle="--", linewidth=1)
            ax.text(0.03, 0.06, "always slot B", fontsize=7.5, color="#666")
            ax.text(0.70, 0.93, "always slot A", fontsize=7.5, color="#666")
            ax.text(0.04, 0.90, "consistent:\nthe answer decides", fontsize=7.5, color="#666", va="top")
            ax.set_xlabel("P(slot A wins), chosen shown in A")
            ax.set_ylabel("P(slot A wins), chosen shown in B")
            pc = stats.get("position_consistency_rate")
            fs = stats.get("first_slot_preference_rate")
            ax.set_title(f"slot bias, n={len(both)} pairs: consistency {_f(num(pc))}, first slot wins "
                         f"{_f(num(fs))}\ngreen: both orders agree; red: they disagree", fontsize=8.5)
        else:
            xs = [float(p["p_first_order"]) for p in pairs]
            ax.hist(xs, bins=10, range=(0, 1), color=COLOURS[1], alpha=0.85)
            ax.set_xlabel("P(slot A wins) (one order only)")
            ax.set_ylabel("pairs")
            ax.set_title(f"first-slot probability (n={len(xs)} pairs, one order)", fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02) if both else None
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


__all__ = ["category_rates", "outcome_points", "plot_categories", "plot_labels", "plot_outcome", "plot_training",
           "plot_win_rates", "training_panels"]
