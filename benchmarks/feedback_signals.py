"""Own-feedback signals measured on the labelled pair set: which could label a round's data?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/feedback_signals.py \
        --model base=smollm2-135m --model round1=runs/quickstart/round-1/rehearsal \
        [--pairs examples/labelled_pairs.jsonl] [--signals judge,loglik,...] [--json out.json]

For every model and signal it prints agreement with the known better response per
direction (refusal beats harmful compliance; an answer beats a needless refusal; a good
answer beats a wrong, evasive, off-topic or degenerate one), Wilson 95% intervals, the
pairwise judge's position consistency, and mean confidence |p - 0.5|. Signals:

- ``judge``: ConstitutionJudge, both orders, one principle per pair (the (A)/(B) soft label);
- ``judge_all``: the same with every principle averaged;
- ``loglik`` / ``loglik_mean``: log p(response | prompt) under the model, summed / per token;
- ``opening``: log p of the response's first 4 words (where it answers or refuses);
- ``implicit`` / ``implicit_opening``: log π_model − log π_base (the DPO implicit reward) over the
  whole response / its first 4 words; needs a model named ``base`` (the reference);
- ``self_verdict``: the model's own Yes/No answer to "is this a good response?" on each response alone;
- ``consensus``: self-consistency: each response's mean MiniLM similarity to 8 of the model's own samples
  for the prompt (what the model does most often wins).

The pair set is never trained or tuned on; the eval files are not read.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=SPEC (embedded name or model dir); "
                    "name one 'base' for the implicit-reward signals")
    ap.add_argument("--score", action="append", default=None,
                    help="score only these models (NAME; repeatable); the others load as references only")
    ap.add_argument("--pairs", default=str(ROOT / "examples" / "labelled_pairs.jsonl"))
    ap.add_argument("--constitution", default="harmless")
    ap.add_argument("--signals", default="judge,judge_all,loglik,loglik_mean,opening,implicit,implicit_opening,"
                                         "self_verdict")
    ap.add_argument("--limit", type=int, default=None, help="first N pairs of each direction")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    from cai.backends import make_backend
    from cai.constitution import load_constitution
    from cai.evaluation.labeller import NEEDS_REFERENCE, SIGNAL_NAMES, measure_signal
    from cai.judge import ConstitutionJudge
    from cai.labelled_pairs import DIRECTIONS, load_labelled_pairs

    pairs = load_labelled_pairs(args.pairs)
    if args.limit:
        pairs = [q for d in DIRECTIONS for q in [p for p in pairs if p.direction == d][: args.limit]]
    signals = [s.strip() for s in args.signals.split(",") if s.strip()]
    unknown = set(signals) - set(SIGNAL_NAMES)
    if unknown:
        raise SystemExit(f"unknown signals {sorted(unknown)}; known: {', '.join(SIGNAL_NAMES)}")
    models = dict(m.split("=", 1) for m in args.model)
    constitution = load_constitution(args.constitution)
    backends = {name: make_backend(spec, dtype=args.dtype, batch_size=32, progress=False)
                for name, spec in models.items()}
    base = backends.get("base")
    results = []
    print(f"{len(pairs)} pairs: " + ", ".join(f"{d} {sum(q.direction == d for q in pairs)}" for d in DIRECTIONS))
    print(f"{'model':10} {'signal':17} " + " ".join(f"{d:>22}" for d in DIRECTIONS) + "  consist  conf   secs")
    for name, backend in backends.items():
        if args.score and name not in args.score:
            continue
        for signal in signals:
            if signal in NEEDS_REFERENCE and (base is None or backend is base):
                continue
            t0 = time.time()
            fig = measure_signal(signal, backend, pairs, reference=base, make_judge=lambda b, principles: (
                ConstitutionJudge(constitution, b, principles=principles or 1)))
            fig["seconds"] = round(time.time() - t0, 1)
            results.append({"name": name, **fig})
            cells = []
            for d in DIRECTIONS:
                v = fig["directions"].get(d)
                cells.append(f"{v['rate']:.2f} [{v['low']:.2f},{v['high']:.2f}]" if v else "-")
            pc = fig["position_consistency"]
            print(f"{name:10} {signal:17} " + " ".join(f"{c:>22}" for c in cells)
                  + f"  {'-' if pc is None else f'{pc:.2f}':>7}  {fig['mean_confidence']:.2f}  {fig['seconds']:5.0f}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
