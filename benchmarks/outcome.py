"""Did the round make the model better? Base vs each round's models on the held-out eval sets.

    .venv/bin/python benchmarks/outcome.py [RUN_DIR] [--red-team FILE] [--benign FILE]
        [--max-new-tokens 64] [--batch-size 64] [--json OUT.json]

RUN_DIR defaults to runs/quickstart (what `make demo` writes). For the base model and
every model-producing stage of every round (e.g. round-1/sft and round-1/dpo), greedy
answers to `examples/prompts/eval_red_team.jsonl` and `examples/prompts/eval_benign.jsonl`
(held out: never trained on, never used to choose settings), classified by cai's refusal
detector. Prints, with Wilson 95% intervals: refusal on eval red-team (overall and per
category), refusal on eval benign (overall and the look-unsafe subset), distinct-2 over
the benign answers that are not refusals, and each stage's wall time from the manifest.

Independent of the run's own `eval` stage: it regenerates every answer itself.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]


def fmt(r: dict) -> str:
    if r["rate"] is None:
        return "n/a"
    return f"{r['rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}] ({r['k']}/{r['n']})"


def models_of_run(run_dir: Path) -> dict[str, str]:
    from cai.rounds import get_stage, read_manifest

    manifest = read_manifest(run_dir)
    cfg_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    import yaml

    base = yaml.safe_load(cfg_text)["models"]["policy"]
    models = {"base": base}
    for k in range(1, int(manifest.get("rounds", 1)) + 1):
        for stage in manifest.get("pipeline", []):
            rec = manifest["stages"].get(f"round-{k}/{stage}", {})
            if get_stage(stage).produces_policy and rec.get("status") == "complete":
                models[f"round-{k}/{stage}"] = str(run_dir / rec["output"])
    return models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default=str(ROOT / "runs" / "quickstart"))
    ap.add_argument("--red-team", default=str(ROOT / "examples/prompts/eval_red_team.jsonl"))
    ap.add_argument("--benign", default=str(ROOT / "examples/prompts/eval_benign.jsonl"))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = ap.parse_args()

    from cai.backends import make_backend
    from cai.backends.base import SamplingParams
    from cai.data import load_prompts
    from cai.evaluation.outcome import outcome_figures
    from cai.evaluation.runner import generate_for_sets
    from cai.rounds import read_manifest

    run_dir = Path(args.run_dir)
    red, benign = load_prompts(args.red_team), load_prompts(args.benign)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    results = {}
    for name, spec in models_of_run(run_dir).items():
        backend = make_backend(spec, batch_size=args.batch_size, progress=False)
        responses = generate_for_sets(backend, {"red_team": red, "benign": benign}, params)
        results[name] = outcome_figures(red, benign, responses)
        del backend

    print(f"# outcome on held-out sets: {len(red)} red-team ({args.red_team}), {len(benign)} benign "
          f"({sum(1 for r in benign if r.extra.get('look_unsafe'))} look-unsafe); greedy, "
          f"{args.max_new_tokens} new tokens; Wilson 95% intervals")
    print(f"{'model':<20} {'refuses harmful':<34} {'refuses benign':<34} {'refuses look-unsafe':<34} distinct-2")
    for name, f in results.items():
        print(f"{name:<20} {fmt(f['red_team_refusal']):<34} {fmt(f['benign_refusal']):<34} "
              f"{fmt(f['benign_look_unsafe_refusal']):<34} {f['benign_distinct_2']:.3f}")
    print("\n# refusal of eval red-team by category")
    cats = sorted({c for f in results.values() for c in f["red_team_by_category"]})
    print(f"{'category':<30} " + " ".join(f"{n:<16}" for n in results))
    for c in cats:
        print(f"{c:<30} " + " ".join(
            f"{results[n]['red_team_by_category'][c]['rate']:.2f} ({results[n]['red_team_by_category'][c]['n']})".ljust(16)
            for n in results))
    print("\n# stage wall time (manifest)")
    manifest = read_manifest(run_dir)
    total = 0.0
    for name, rec in manifest["stages"].items():
        if rec.get("seconds") is not None:
            total += rec["seconds"]
            print(f"{name:<28} {rec['seconds']:>8.1f} s")
    print(f"{'all stages':<28} {total:>8.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
