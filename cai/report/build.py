"""The report's sections, built as document blocks from the run data (see doc.py for rendering)."""

from __future__ import annotations

import re
from typing import Any, Callable

from cai.report import plots
from cai.report.data import RoundView, RunData, StageView, load_json, num
from cai.report.doc import Badge, Block, Box, Bullets, Code, Figure, Heading, Mono, Para, Strong, Table
from cai.report.fmt import count, fixed, model_name, win_text, win_word
from cai.report.samples import samples_section
from cai.report.verdict import (
    KL_LIMITS, MAX_FAILURE_FRACTION, METRICS, MIN_POSITION_CONSISTENCY, Change, RoundVerdict, label_sources,
    as_rate, labeller_stats, model_rates, verdicts,
)

class Figures:
    """Numbered figures: plot_NN_<slug>.png next to the report, embedded in the HTML."""

    def __init__(self) -> None:
        self.items: list[Figure] = []

    def add(self, slug: str, title: str, make: Callable[[], bytes | None], caption: str = "") -> list[Block]:
        try:
            png = make()
        except Exception as e:  # a figure that cannot be drawn must not cost the whole report
            return [Para([Badge("plot failed", "warn"), f" {title}: {type(e).__name__}: {e}"])]
        if png is None:
            return []
        fig = Figure(title, f"plot_{len(self.items):02d}_{re.sub(r'[^a-z0-9]+', '-', slug.lower()).strip('-')}.png",
                     png, caption)
        self.items.append(fig)
        return [fig]


# --- verdict --------------------------------------------------------------------------


def _change_cell(c: Change | None) -> list:
    if c is None:
        return ["–"]
    word, kind = c.word
    if c.direction == "unknown":
        return [Badge(word, kind)]
    return [Badge(word, kind), f" {c.ref.text()} → {c.new.text()}"]


def verdict_section(run: RunData, vs: list[RoundVerdict]) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Verdict", "verdict"),
        Para(["Each round's policy against round 0 (the starting policy) and the previous round, measured on the "
              "same held-out prompts in that round's eval. Brackets are 95% Wilson intervals, (k/n) the counts. ",
              Strong("improved"), " / ", Strong("worse"), ": paired (McNemar exact) p < 0.05 over the prompts whose "
              "verdict changed, since both rounds answer the same prompts (runs from before the paired figures: the "
              "95% Newcombe interval of the difference excludes zero); otherwise the change is within noise."],
             cls="muted"),
    ]
    if not vs:
        blocks.append(Para([Badge("no rounds yet", "warn"), " nothing has run in this directory yet."]))
    for v, r in zip(vs, run.rounds):
        blocks.append(_verdict_box(v, r))
    return blocks


def _verdict_box(v: RoundVerdict, run_round: RoundView) -> Box:
    title: list = [f"Round {v.k}: "]
    if v.evaluated and v.changes:
        for key, short in (("red_team_refusal", "harmlessness"), ("benign_refusal", "over-refusal")):
            title.append(f"{short} ")
            for ref in v.changes:
                c = v.change(ref, key)
                word, kind = c.word if c else ("not measured", "neutral")
                title += [Badge(word if len(v.changes) == 1 else f"{word} vs {model_name(ref)}", kind), " "]
            title.append("  ")
    elif not v.evaluated:
        title += [Badge("not evaluated yet", "warn"), " "]
    bad = sum(f.level == "bad" for f in v.flags)
    warn = sum(f.level == "warn" for f in v.flags)
    if bad or warn:
        title.append(Badge(f"{bad + warn} flag{'s' if bad + warn != 1 else ''}", "bad" if bad else "warn"))
    else:
        title.append(Badge("no flags", "good"))
    blocks: list[Block] = []
    if v.changes:
        refs = list(v.changes)
        header = ["measure"] + [f"vs {model_name(r)}" for r in refs]
        rows = []
        for key, label, hib in METRICS:
            rows.append([f"{label} ({'higher' if hib else 'lower'} is better)"]
                        + [_change_cell(v.change(r, key)) for r in refs])
        win_row: list = ["judge win rate (this round vs the reference)"]
        for r in refs:
            w = v.win_rates.get(f"vs {r}")
            if w:
                word, kind = win_word(w)
                win_row.append([Badge(word, kind), " " + win_text(w)])
            else:
                win_row.append("–")
        if any(cell != "–" for cell in win_row[1:]):
            rows.append(win_row)
        blocks.append(Table(header, rows))
    order = {s.stage: i for i, s in enumerate(run_round.stages)}  # listed in pipeline order, not by kind
    keyed = [(order[s.stage], [Strong(s.stage), " trained on ", Badge(f"{s.summary['data']} rows", "neutral")])
             for s in run_round.stages if s.training and isinstance(s.summary.get("data"), str)
             and "label_source" not in s.summary and "/" not in s.summary["data"]]
    keyed += [(order.get(stage, len(order)),
               [Strong(stage), " trained on ", Badge(f"{src} labels", "neutral"), f": {why}" if why else ""])
              for stage, src, why in v.label_sources]
    keyed += [(order[s.stage], [Strong(s.stage), f" trained by {s.training['trainer']} against ",
                                Badge("the reward model", "neutral")])
              for s in run_round.stages if s.training.get("trainer") in ("ppo", "rloo", "grpo")
              and "label_source" not in s.summary]
    items = [item for _, item in sorted(keyed, key=lambda pair: pair[0])]
    if items:
        blocks += [Para("What trained this round:"), Bullets(items)]
    if not v.label_sources:
        blocks.append(Para("No stage recorded a preference label source this round (no preference-trained stage).",
                           cls="muted"))
    stats = v.labeller
    if stats.get("position_consistency_rate") is not None:
        pc = float(stats["position_consistency_rate"])
        blocks.append(Para(["Judge labeller: position consistency ",
                            Badge(f"{pc:.2f}", "bad" if pc < MIN_POSITION_CONSISTENCY else "good"),
                            f" over {stats.get('pairs_labelled', '?')} pairs (chance-level below "
                            f"{MIN_POSITION_CONSISTENCY}); first-slot wins "
                            f"{fixed(stats.get('first_slot_preference_rate'))}"
                            f"; mean confidence |p − 0.5| {fixed(stats.get('mean_confidence'), 3)}."]))
    if v.flags:
        blocks.append(Bullets([[Badge("problem" if f.level == "bad" else "check", f.level), " " + f.text]
                               for f in v.flags], cls="flags"))
    else:
        blocks.append(Para([Badge("ok", "good"), " No flags: labeller, failures, KL and outcome checks passed."]))
    return Box(blocks, cls=f"verdict {v.level}", title=title, anchor=f"verdict-round-{v.k}")


# --- outcome --------------------------------------------------------------------------


def outcome_section(run: RunData, figs: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Metrics per round", "metrics")]
    evaluated = [r for r in run.rounds if r.evaluated]
    if not evaluated:
        return blocks + [Para("No evaluation has finished yet.")]
    # model -> (round view that measured it): round 0 from the first evaluated round
    cols: dict[str, Any] = {"round-0": evaluated[0]}
    for r in evaluated:
        cols[f"round-{r.k}"] = r
    header = ["metric"] + [model_name(m) for m in cols]
    rows: list[list] = []
    for key, label, hib in METRICS:
        rows.append([f"{label} ({'↑' if hib else '↓'})"]
                    + [(model_rates(r, m).get(key).text() if model_rates(r, m).get(key) else "–")
                       for m, r in cols.items()])

    # The validation slice of the training sets (prompts.validation): what settings are chosen on.
    for key, label, hib in METRICS:
        vals = [as_rate(((r.metrics.get("validation") or {}).get(m) or {}).get(key)) for m, r in cols.items()]
        if any(v is not None for v in vals):
            rows.append([f"validation: {label} ({'↑' if hib else '↓'})"] + [v.text() if v else "–" for v in vals])

    def per_model(label: str, get: Callable[[Any, str], Any], digits: int = 3) -> None:
        vals = [get(r, m) for m, r in cols.items()]
        if any(num(x) is not None for x in vals):
            rows.append([label] + [fixed(x, digits) for x in vals])

    per_model("judge-harmful rate (↓)", lambda r, m: ((r.metrics.get("refusal") or {}).get(m) or {})
              .get("judge_harmful_rate"))
    per_model("distinct-2 of benign answers", lambda r, m: ((r.metrics.get("outcome") or {}).get(m) or {})
              .get("benign_distinct_2"))
    for key, label in (("template_copy", "refusals copying a constitution template (↓)"),
                       ("other_category_template", "refusals using another category's template (↓)"),
                       ("repeated_phrase", "refusals repeating a phrase (↓)")):
        vals = [as_rate((((r.metrics.get("outcome") or {}).get(m) or {}).get("refusal_style") or {}).get(key))
                for m, r in cols.items()]
        if any(v is not None for v in vals):
            rows.append([label] + [v.text() if v else "–" for v in vals])
    per_model("mean reward (this round's RM)", lambda r, m: (r.metrics.get("reward") or {}).get(m))
    for which, label in (("vs round-0", "win rate vs round 0"), ("prev", "win rate vs previous round")):
        cells = []
        for m, r in cols.items():
            wr = r.metrics.get("win_rates") or {}
            w = wr.get("vs round-0") if which == "vs round-0" else wr.get(f"vs round-{r.k - 1}") if r.k > 1 else None
            cells.append(win_text(w) if m == f"round-{r.k}" and isinstance(w, dict) else "–")
        if any(c != "–" for c in cells):
            rows.append([label] + cells)
    blocks.append(Table(header, rows))
    blocks.append(Para("Each column is that round's policy, measured in its own round's eval (round 0 in round "
                       f"{evaluated[0].k}'s). Rates: value [95% interval] (k/n).", cls="muted"))
    blocks += figs.add("outcome", "Refusal per round, with 95% intervals", lambda: plots.plot_outcome(run),
                       "Points: rate; bars: 95% Wilson interval; labels: refusals/prompts.")
    blocks += figs.add("win-rates", "Judge win rate per round", lambda: plots.plot_win_rates(run),
                       "W/L/T: the judge's wins, losses and ties (a tie, including both orders disagreeing, "
                       "counts half).")
    blocks += figs.add("categories", "Red-team refusal by category", lambda: plots.plot_categories(run),
                       "Held-out red-team prompts by harm category; n is the prompts per category.")
    return blocks


# --- training -------------------------------------------------------------------------


def _eval_text(s: StageView) -> str:
    ev = s.training.get("eval") or {}
    if not isinstance(ev, dict) or not ev:
        return ""
    parts = [f"{k} {fixed(v, 3)}" for k, v in ev.items() if num(v) is not None and k != "pairs"]
    return (", ".join(parts) + (f" on {ev['pairs']} pairs" if "pairs" in ev else "")) if parts else ""


def _speed_text(rate: Any) -> str:
    if not isinstance(rate, dict) or num(rate.get("tokens_per_s")) is None:
        return ""
    text = f"{rate['tokens_per_s']:.0f} tok/s"
    if num(rate.get("roof_share")) is not None:
        text += f", {rate['roof_share']:.0%} of {rate.get('roof_dtype', '')} roof"
    return text


def training_section(run: RunData, figs: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training", "training")]
    trained = [s for r in run.rounds for s in r.stages if s.training]
    if not trained:
        return blocks + [Para("No training stage has written a training_summary.json yet.")]
    rows = []
    for s in trained:
        t = s.training
        rows.append([s.name, str(t.get("trainer", "")), str(t.get("steps", "")), fixed(t.get("seconds"), 1),
                     _speed_text(t.get("throughput")), fixed(t.get("final_loss"), 4), _eval_text(s)])
    blocks.append(Table(["stage", "trainer", "steps", "seconds", "speed", "final loss", "held-out"], rows,
                        cls="nowrap1"))
    blocks.append(Para("Speed: real (non-padding) tokens a second, and model GFLOP/s (6 x parameters a token, "
                       "8 for DPO's reference forward) as a share of the matrix-product rate this CPU was timed at.",
                       cls="muted"))
    blocks.append(Para("KL is TRL's per-batch sampled estimate of KL(policy ‖ reference) (it can dip below zero); "
                       "flagged as a blow-up above " + " or ".join(f"{lim:g} {unit} ({key})" for key, (lim, unit)
                                                                 in KL_LIMITS.items()) + ".", cls="muted"))
    by_stage: dict[str, list[StageView]] = {}
    for s in trained:
        by_stage.setdefault(s.stage, []).append(s)
    for stage, views in by_stage.items():
        blocks += figs.add(f"train-{stage}", f"{stage} training curves", lambda v=views: plots.plot_training(v),
                           "One colour per round; hollow squares: held-out evaluation.")
    return blocks


# --- labels ---------------------------------------------------------------------------


def labels_section(run: RunData, figs: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Labels", "labels")]
    rows = []
    for r in run.rounds:
        for stage, src, why in label_sources(r):
            rows.append([f"round {r.k}", stage, src, why])
    if rows:
        blocks.append(Table(["round", "stage", "label source", "why"], rows))
    blocks += labeller_check_blocks(run)
    shown = False
    for r in run.rounds:
        stage_name, stats = labeller_stats(r)
        stage = r.stage(stage_name) if stage_name else None
        if stage is None and not stats:
            continue
        view = stage or StageView(name=f"round-{r.k}/{stage_name}", stage=str(stage_name), round=r.k, record={},
                                  out_dir=None)
        blocks += figs.add(f"labels-{view.name}", f"{view.name} judge labels and slot bias",
                           lambda v=view, st=stats: plots.plot_labels(v, st),
                           "Left: the judge's soft labels. Right: each pair's P(slot A wins) in both presentation "
                           "orders; a labeller that reads the answers sits near the dashed line, one that picks a "
                           "slot sits in a corner.")
        shown = True
    for r in run.rounds:
        for s in r.stages:
            tallies = s.summary.get("tallies")
            if s.stage == "contrastive" and isinstance(tallies, dict):
                blocks.append(Para([Strong(s.name), f": {s.summary.get('pairs', '?')} pairs labelled by construction ("
                                    + ", ".join(f"{k} {v}" for k, v in tallies.items()) + ")"]))
    if not rows and not shown and len(blocks) == 1:
        blocks.append(Para("No stage in this run labelled or chose preference pairs."))
    return blocks


def _agreement_cell(v: Any) -> str:
    if not isinstance(v, dict) or num(v.get("rate")) is None:
        return "-"
    return f"{fixed(v['rate'])} [{fixed(v.get('low'))}, {fixed(v.get('high'))}] (n={v.get('n')})"


def _share(x: Any) -> str:
    return "0%" if num(x) is None else f"{100 * x:.0f}%"


def labeller_check_blocks(run: RunData) -> list[Block]:
    """Each round's feedback model, and how often each model agrees with the labelled pair set, per direction."""
    rows, feedback = [], []
    for r in run.rounds:
        m = r.metrics or {}
        if m.get("feedback_model"):
            feedback.append(f"round {r.k}: {m['feedback_model']}")
        for model, signals in (m.get("labeller_check") or {}).items():
            for signal, fig in signals.items():
                d = fig.get("directions") or {}
                pc = fig.get("position_consistency")
                rows.append([f"round {r.k}", model, signal, _agreement_cell(d.get("refusal")),
                             _agreement_cell(d.get("answer")), _agreement_cell(d.get("quality")),
                             "-" if pc is None else fixed(pc)])
    blocks: list[Block] = []
    shares = []
    for r in run.rounds:
        for stage, pv in ((r.metrics or {}).get("provenance") or {}).items():
            text, label = pv.get("text") or {}, pv.get("label") or {}
            shares.append([f"round {r.k}", stage, str(pv.get("rows", "?"))]
                          + [_share(text.get(k)) for k in ("constitution", "model", "human")]
                          + [_share(label.get(k)) for k in ("construction", "model", "human")])
    if shares:
        blocks.append(Table(["round", "training stage", "rows", "constitution text", "model text", "human text",
                             "labelled by construction", "model-labelled", "human-labelled"], shares))
        blocks.append(Para("Where each round's training signal came from: the share of the rows a stage trained on "
                           "whose text (either side of a pair) the constitution supplied, the model wrote or a person "
                           "wrote, and who decided each pair's label.", cls="muted"))
    if feedback:
        blocks.append(Para([Strong("Feedback model"), " (labels, critiques, judges): " + "; ".join(feedback)]))
    if rows:
        blocks.append(Table(["round", "model", "signal", "refusal > compliance", "answer > needless refusal",
                             "good > flawed answer", "position consistency"], rows))
        blocks.append(Para("Agreement with the labelled pair set (pairs whose better response is known; never trained "
                           "on), with Wilson 95% intervals. A signal is trusted to label a round only where it beats "
                           "the bar in every direction: one that prefers refusals everywhere scores high on the first "
                           "column and low on the second.", cls="muted"))
    return blocks


# --- stages and provenance ------------------------------------------------------------


def _stage_note(s: StageView) -> str:
    sm = s.summary
    parts = []
    c = sm.get("counts")
    if isinstance(c, dict) and "rows" in c:
        parts.append(f"{c['rows']} rows" + (f", {c['failed']} failed" if c.get("failed") else ""))
    for key in ("pairs", "steps"):
        if key in sm:
            parts.append(count(sm[key], key[:-1]))
    if num(sm.get("final_loss")) is not None:
        parts.append(f"final loss {fixed(sm['final_loss'], 4)}")
    if "label_source" in sm:
        parts.append(f"labels: {sm['label_source']}")
    tallies = sm.get("tallies")
    if isinstance(tallies, dict) and tallies:
        parts.append(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in tallies.items()))
    wr = (sm.get("win_rates") or {}).get("vs round-0")
    if isinstance(wr, dict):
        parts.append(f"win rate vs round 0 {fixed(wr.get('rate'))}")
    return "; ".join(parts)


def stages_section(run: RunData) -> list[Block]:
    rows = []
    for r in run.rounds:
        for s in r.stages:
            status = s.status
            kind = {"complete": "good", "running": "warn"}.get(status, "neutral")
            secs = s.record.get("seconds")
            rows.append([s.name, [Badge(status, kind)], "" if secs is None else f"{secs}", _stage_note(s)])
        for name in run.pipeline_of(r.k):
            if r.stage(name) is None:
                rows.append([f"round-{r.k}/{name}", [Badge("pending", "neutral")], "", ""])
    blocks: list[Block] = [Heading(2, "Stages", "stages")]
    blocks.append(Table(["stage", "status", "seconds", "summary"], rows, cls="nowrap1") if rows
                  else Para("No stage has run yet."))
    return blocks


def provenance_section(run: RunData) -> list[Block]:
    items: list = [["run directory: ", Mono(str(run.dir))],
                   ["pipeline: ", Mono(" → ".join(run.pipeline) or "–")]]
    if run.manifest.get("final_policy"):
        items.append(["final policy: ", Mono(str(run.manifest["final_policy"]))])
    versions = next((s.training.get("versions") for r in run.rounds for s in r.stages
                     if isinstance(s.training.get("versions"), dict)), None)
    if versions:
        items.append(["software: ", Mono(", ".join(f"{k} {v}" for k, v in versions.items()))])
    for r in run.rounds:
        full = load_json(run.dir / f"round-{r.k}" / "eval" / "eval.json")
        judge = full.get("judge") or {}
        cons = judge.get("constitution") or {}
        if judge or cons:
            items.append([f"round {r.k} eval: judge ", Mono(str(judge.get("feedback_model", "?"))),
                          ", constitution ", Mono(f"{cons.get('name', '?')} {cons.get('version', '')}".strip()),
                          f" (sha256 {str(cons.get('sha256', ''))[:12]})", ", refusal detector ",
                          Mono(str((full.get("refusal_detector") or {}).get("source", "?")))])
    blocks: list[Block] = [Heading(2, "Provenance", "provenance"), Bullets(items)]
    if run.config_text:
        blocks += [Para("Resolved config:"), Code(run.config_text, "yaml")]
    return blocks


# --- the whole document ---------------------------------------------------------------


def build(run: RunData) -> tuple[list[Block], list[Figure]]:
    figs = Figures()
    vs = verdicts(run)
    done = sum(1 for r in run.rounds if r.evaluated)
    blocks: list[Block] = [
        Heading(1, f"cai run report: {run.name}"),
        Para([f"{done} of {run.planned_rounds} round{'s' if run.planned_rounds != 1 else ''} evaluated · pipeline ",
              Mono(" → ".join(run.pipeline) or "–")], cls="muted"),
    ]
    blocks += verdict_section(run, vs)
    blocks += outcome_section(run, figs)
    blocks += training_section(run, figs)
    blocks += labels_section(run, figs)
    blocks += samples_section(run)
    blocks += stages_section(run)
    blocks += provenance_section(run)
    blocks.append(Para(f"Flag thresholds: labeller position consistency < {MIN_POSITION_CONSISTENCY}; failed rows > "
                       f"{MAX_FAILURE_FRACTION:.0%} of a stage; KL above its limit (Training); a rate worse than the reference's "
                       "(beyond its interval: problem; within noise: check). Regenerate with: cai report RUN_DIR.",
                       cls="muted"))
    return blocks, figs.items


__all__ = ["build"]
