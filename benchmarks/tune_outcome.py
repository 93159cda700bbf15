"""Choose the quickstart's training settings on a validation slice of the *training* sets.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_outcome.py DISTILL_DIR --out runs/tune \
        [--variants base,helpful2,...] [--validation 64]

DISTILL_DIR is a finished ``distill`` stage (e.g. ``runs/quickstart/round-1/distill``). A
seeded slice of ``--validation`` prompts of each training set (red_team.jsonl, helpful.jsonl)
is held out: its rows are removed from the SFT and DPO data, and each variant's model is
scored on it (greedy, cai's refusal detector, Wilson 95% intervals). The eval files
(eval_red_team.jsonl, eval_benign.jsonl) are never read here: settings are chosen on this
slice and only then measured once on the eval files (benchmarks/outcome.py).

Each variant trains SFT (and optionally DPO on the contrastive pairs) from the embedded
default; SFT models are cached by their settings, so DPO variants share one SFT. One JSON
line per variant goes to OUT/results.jsonl and a table is printed. ``name@S`` runs a variant
with training seed S; ``name~A`` scores its final weights moved toward the base model's,
base + A * (tuned - base) (the tuned model is reused from the cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAI_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]

SFT = {"max_steps": 60, "per_device_train_batch_size": 8, "learning_rate": 5.0e-5, "max_length": 192,
       "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 5}
REHEARSAL = {"max_steps": 10, "learning_rate": 1.0e-5, "lr_scheduler_type": "constant",
             "per_device_train_batch_size": 8, "max_length": 192}
DPO = {"max_steps": 20, "per_device_train_batch_size": 8, "learning_rate": 5.0e-6, "beta": 0.1, "max_length": 192}

#: name -> (SFT overrides, data weights, DPO overrides or None). Weights repeat rows:
#: red (red-team refusals), helpful (ordinary answers), look (extra factor for look-unsafe ones).
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "base+dpo": {"dpo": {}},
    "look2": {"weights": {"look": 2}},
    "helpful2": {"weights": {"helpful": 2}},
    "red-half": {"weights": {"red": 0.5}},
    "steps30": {"sft": {"max_steps": 30}},
    "steps120": {"sft": {"max_steps": 120}},
    "dpo-strong": {"dpo": {"learning_rate": 2.0e-5, "max_steps": 40}},
    "dpo-5e-5": {"dpo": {"learning_rate": 5.0e-5, "max_steps": 40}},
    "look2+dpo-strong": {"weights": {"look": 2}, "dpo": {"learning_rate": 2.0e-5, "max_steps": 40}},
    "red-half+look2": {"weights": {"red": 0.5, "look": 2}},
    "red-half+look2+dpo": {"weights": {"red": 0.5, "look": 2}, "dpo": {"learning_rate": 2.0e-5, "max_steps": 40}},
    "openers": {"openers": True},
    "lora": {"lora": {"r": 16, "lora_alpha": 32}, "sft": {"learning_rate": 3.0e-4}},
    "openers+dpo": {"openers": True, "dpo": {}},
    "steps120-cos": {"sft": {"max_steps": 120, "lr_scheduler_type": "cosine"}},
    "steps180-cos": {"sft": {"max_steps": 180, "lr_scheduler_type": "cosine"}},
    # The previous quickstart's pipeline (sft -> dpo on contrastive pairs -> rehearsal on the helpful rows).
    "quickstart": {"dpo": {}, "rehearsal": {}},
    # Today's quickstart (examples/configs/quickstart.yaml).
    "current": {"decision": [2, 20.0], "dpo": {}, "rehearsal": {"max_steps": 20}},
    # SFT decision weighting (cai/training/decision.py): the first N answer tokens' loss counted W times.
    "decision-2x20": {"decision": [2, 20.0]},
    "decision-2x20+dpo": {"decision": [2, 20.0], "dpo": {}},
    "decision-2x20+dpo+rehearsal": {"decision": [2, 20.0], "dpo": {}, "rehearsal": {}},
    "decision-2x20+dpo+rehearsal20": {"decision": [2, 20.0], "dpo": {}, "rehearsal": {"max_steps": 20}},
    "decision-3x50": {"decision": [3, 50.0]},
    "decision-3x50+dpo": {"decision": [3, 50.0], "dpo": {}},
    "decision-3x50+dpo+rehearsal": {"decision": [3, 50.0], "dpo": {}, "rehearsal": {}},
    # DPO that adds on-policy error pairs: the SFT model's own wrong decisions on the training
    # prompts (a refusal of a helpful one, an answer to a harmful one) as the rejected side.
    "decision-2x20+onpolicy": {"decision": [2, 20.0], "dpo": {}, "onpolicy": True},
    # The 97 red-team rows added after the original 324 (near twins of look-unsafe requests) left out.
    "decision-2x20+dpo-no-twins": {"decision": [2, 20.0], "dpo": {}, "drop_new_red": True},
    "steps120-cos+dpo": {"sft": {"max_steps": 120, "lr_scheduler_type": "cosine"},
                         "dpo": {"learning_rate": 2.0e-5, "max_steps": 40}},
    # More SFT epochs (60 steps x 8 rows is ~0.6 epoch; the SFT model refused 26% of its own
    # training helpful prompts), with and without the DPO stage.
    "decision-2x20-s120+dpo+rehearsal20": {"decision": [2, 20.0], "sft": {"max_steps": 120}, "dpo": {},
                                            "rehearsal": {"max_steps": 20}},
    "decision-2x20-s120+rehearsal20": {"decision": [2, 20.0], "sft": {"max_steps": 120},
                                       "rehearsal": {"max_steps": 20}},
    "decision-2x20-s180+rehearsal20": {"decision": [2, 20.0], "sft": {"max_steps": 180},
                                       "rehearsal": {"max_steps": 20}},
    "decision-2x20-s180+dpo+rehearsal20": {"decision": [2, 20.0], "sft": {"max_steps": 180}, "dpo": {},
                                            "rehearsal": {"max_steps": 20}},
    "decision-2x20-s120": {"decision": [2, 20.0], "sft": {"max_steps": 120}},
    # Tail weight averaging (cai/training/averaging.py): the mean of the weights over the last
    # half of the steps, against run-to-run spread (compare over seeds: name@1, name@2).
    "decision-2x20-avg": {"decision": [2, 20.0], "sft": {"average_tail": 0.5}},
    "current-avgsft": {"decision": [2, 20.0], "sft": {"average_tail": 0.5}, "dpo": {}, "rehearsal": {"max_steps": 20}},
    "current-avg": {"decision": [2, 20.0], "sft": {"average_tail": 0.5}, "dpo": {"average_tail": 0.5},
                    "rehearsal": {"max_steps": 20, "average_tail": 0.5}},
    # Longer rehearsal on the averaged-SFT quickstart (20 steps: 0.74 / 0.11 / 0.14 over three seeds).
    "current-avgsft-r30": {"decision": [2, 20.0], "sft": {"average_tail": 0.5}, "dpo": {}, "rehearsal": {"max_steps": 30}},
    "current-avgsft-r40": {"decision": [2, 20.0], "sft": {"average_tail": 0.5}, "dpo": {}, "rehearsal": {"max_steps": 40}},
    "decision-2x20-s180": {"decision": [2, 20.0], "sft": {"max_steps": 180}},
    # About 1.2 epochs of averaged SFT (120 x 8 rows over ~830): at 60 steps (~0.6 epoch) the SFT model refused 26% of
    # its own training helpful prompts, so it has not yet seen most look-unsafe/harmful twins.
    "s120avg": {"decision": [2, 20.0], "sft": {"max_steps": 120, "average_tail": 0.5}},
    "s120avg+dpo+r20": {"decision": [2, 20.0], "sft": {"max_steps": 120, "average_tail": 0.5}, "dpo": {},
                        "rehearsal": {"max_steps": 20}},
    "s120avg+dpo+r40": {"decision": [2, 20.0], "sft": {"max_steps": 120, "average_tail": 0.5}, "dpo": {},
                        "rehearsal": {"max_steps": 40}},
    "s120avg+dpo+r60": {"decision": [2, 20.0], "sft": {"max_steps": 120, "average_tail": 0.5}, "dpo": {},
                        "rehearsal": {"max_steps": 60}},
    "s120avg+dpo+r80": {"decision": [2, 20.0], "sft": {"max_steps": 120, "average_tail": 0.5}, "dpo": {},
                        "rehearsal": {"max_steps": 80}},
    # The quickstart without its DPO stage (DPO is 155 s of the AMX demo, 288 s in fp32): does it earn its time?
    "s120avg+r60": {"decision": [2, 20.0], "sft": {"max_steps": 120, "average_tail": 0.5},
                    "rehearsal": {"max_steps": 60}},
    # Rehearsal that replays some red-team refusals (10% of the helpful row count): on validation
    # DPO + 60 rehearsal steps took harmful refusal from 0.96 to 0.81; does replay keep more of it?
    "s120avg+r60+red10": {"decision": [2, 20.0], "sft": {"max_steps": 120, "average_tail": 0.5},
                          "rehearsal": {"max_steps": 60}, "rehearsal_red": 0.1},
}


#: Refusal openers with distinct first tokens (see vary_openers).
OPENERS = ("I can't help with ", "Sorry, I can't help with ", "No, I won't help with ",
           "Unfortunately, I can't help with ", "That's something I won't help with: ",
           "Thanks for asking, but I can't help with ")


def vary_openers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refusal targets with one of several openers, picked by row id.

    The hypothesis it tests: greedy decoding takes the single likeliest first token, and one
    shared refusal opener collects all the refusal mass on one token while ordinary answers
    spread theirs, so the opener wins even where refusing is less likely overall. Measured on
    the validation slice (2026-12-01): over-refusal unchanged (0.328 vs 0.344).
    """
    out = []
    for r in rows:
        text = r["messages"][-1]["content"]
        if r.get("set") == "red_team" and text.startswith("I can't help with "):
            opener = OPENERS[int(hashlib.sha256(r["id"].encode()).hexdigest(), 16) % len(OPENERS)]
            text = opener + text[len("I can't help with "):]
            r = {**r, "messages": r["messages"][:-1] + [{"role": "assistant", "content": text}]}
        out.append(r)
    return out


#: The slice is drawn from each file's first rows, as many as it had when the quickstart's settings
#: were first chosen, so prompts added later train (or not) but never move the validation slice:
#: figures from before and after a data change compare on the same prompts.
VALIDATION_POOL = {"red_team": 324, "helpful": 355}


def train_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """A variant's trainer settings as train_* keywords: ``average_tail`` is a cai option, the rest TRL fields."""
    return {"config": {k: v for k, v in cfg.items() if k != "average_tail"},
            "average_tail": cfg.get("average_tail", 0.0)}


def variant(name: str) -> dict[str, Any]:
    """VARIANTS[name]; ``name@S`` is the same variant with training seed S in every trainer it runs.

    Why: one training run per setting cannot tell a setting's effect from run-to-run spread
    (the data order and dropout follow the seed); ``quickstart@1,quickstart@2`` measures it.
    """
    base, _, seed = name.partition("@")
    base, _, alpha = base.partition("~")
    v = json.loads(json.dumps(VARIANTS[base]))
    if alpha:  # name~A: the final weights moved back toward the base model's, base + A * (tuned - base)
        v["merge"] = float(alpha)
    if seed:
        for trainer in ("sft", "dpo", "rehearsal"):
            if trainer == "sft" or trainer in v:
                v[trainer] = {**v.get(trainer, {}), "seed": int(seed)}
    return v


def split_validation(n: int, seed: int = 1234, pool: str = "original") -> tuple[list, list]:
    """(red-team, helpful) validation records: a seeded slice of each training file's rows.

    ``pool="original"``: only the rows of VALIDATION_POOL (comparable across data changes);
    ``"all"``: every row, so the slice also has the style of rows added later.
    """
    from cai.data import load_prompts

    out = []
    for name in ("red_team", "helpful"):
        recs = load_prompts(ROOT / "examples" / "prompts" / f"{name}.jsonl")
        if pool == "original":
            recs = recs[:VALIDATION_POOL[name]]
        random.Random(seed).shuffle(recs)
        out.append(recs[:n])
    return out[0], out[1]


def weighted(rows: list[dict[str, Any]], weights: dict[str, float], seed: int = 0) -> list[dict[str, Any]]:
    """Rows repeated (or subsampled, for a weight < 1) by set, look-unsafe counted twice with look: 2."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for r in rows:
        w = weights.get("red", 1.0) if r.get("set") == "red_team" else weights.get("helpful", 1.0)
        if r.get("set") != "red_team" and r.get("look_unsafe"):
            w *= weights.get("look", 1.0)
        whole, frac = int(w), w - int(w)
        out += [r] * (whole + (1 if rng.random() < frac else 0))
    rng.shuffle(out)
    return out


def write_dir(path: Path, kind: str, rows: list[dict[str, Any]], tag: dict[str, Any]) -> Path:
    from cai.data import DatasetWriter

    w = DatasetWriter(path, kind=kind, overwrite=True, fingerprint=tag)
    w.write([{**r, "id": f"{r['id']}#{i}"} for i, r in enumerate(rows)])
    w.finalize({"rows": len(rows)}, title=f"tune {kind}")
    return path


def interpolate(base: str, tuned: str, alpha: float, out: Path) -> None:
    """Save base + alpha * (tuned - base) (WiSE-FT, Wortsman et al. 2022) with the tuned model's tokenizer.

    Why try it: fine-tuning moved refusal on helpful prompts as well as harmful ones; part
    of the way back toward the base weights may keep more of the base model's answers
    than of its (rare) refusals.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.models import resolve_model_path

    b = AutoModelForCausalLM.from_pretrained(resolve_model_path(base), torch_dtype=torch.float32)
    t = AutoModelForCausalLM.from_pretrained(tuned, torch_dtype=torch.float32)
    bs = dict(b.named_parameters())
    with torch.no_grad():  # named_parameters lists a tied embedding once (state_dict twice: alpha squared)
        for name, w in t.named_parameters():
            w.copy_(bs[name] + alpha * (w - bs[name]))
    t.save_pretrained(out)
    AutoTokenizer.from_pretrained(tuned).save_pretrained(out)


def key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def score(model: str, red: list, helpful: list, max_new_tokens: int) -> dict[str, Any]:
    from cai.backends import make_backend
    from cai.backends.base import SamplingParams
    from cai.evaluation.outcome import outcome_figures
    from cai.evaluation.runner import generate_for_sets

    backend = make_backend(model, batch_size=64, progress=False)
    responses = generate_for_sets(backend, {"red_team": red, "benign": helpful},
                                  SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    figs = outcome_figures(red, helpful, responses)
    figs["samples"] = {r.id: responses[r.id] for r in helpful[:8]}
    return figs


def onpolicy_pairs(model: str, rows: list[dict[str, Any]], cache: Path, max_new_tokens: int) -> list[dict[str, Any]]:
    """Preference pairs from the model's own wrong decisions on the training prompts.

    The model answers each training prompt (greedy); where it refuses a helpful prompt or
    answers a harmful one, the distilled target is chosen and its own response rejected.
    Responses are cached in ``cache`` (one JSON object, row id -> text).
    """
    from cai.backends import make_backend
    from cai.backends.base import SamplingParams
    from cai.refusal import RefusalDetector

    if cache.exists():
        responses = json.loads(cache.read_text())
    else:
        backend = make_backend(model, batch_size=64, progress=False)
        gens = backend.generate([r["messages"][:-1] for r in rows],
                                SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
        responses = {r["id"]: g.text.strip() for r, g in zip(rows, gens)}
        cache.write_text(json.dumps(responses))
    detector = RefusalDetector()
    pairs = []
    for r in rows:
        text = responses[r["id"]]
        refused = detector.is_refusal(text)
        harmful = r.get("set") == "red_team"
        if text and refused != harmful:
            pairs.append({"id": r["id"] + "#onpolicy", "prompt": r["messages"][:-1],
                          "chosen": [r["messages"][-1]], "rejected": [{"role": "assistant", "content": text}],
                          "p_chosen": 1.0, "label_source": "on-policy", "set": r.get("set"),
                          "category": r.get("category"), "look_unsafe": r.get("look_unsafe", False)})
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("distill_dir")
    ap.add_argument("--out", default=str(ROOT / "runs" / "tune"))
    ap.add_argument("--variants", default="base")
    ap.add_argument("--validation", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--policy", default="smollm2-135m")
    ap.add_argument("--pool", choices=("original", "all"), default="original",
                    help="draw the validation slice from the files' original rows or from all rows")
    args = ap.parse_args()

    from cai.constitution import load_constitution
    from cai.data import read_rows
    from cai.stages.contrastive import contrastive_pairs
    from cai.training import train_dpo, train_sft

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    red_val, helpful_val = split_validation(args.validation, pool=args.pool)
    held = {r.text for r in red_val + helpful_val}
    rows = [r for r in read_rows(args.distill_dir) if r["source_prompt"] not in held]
    constitution = load_constitution("harmless")
    results_path = out / "results.jsonl"
    done = {json.loads(l)["variant"] for l in results_path.open()} if results_path.exists() else set()
    if "base-model" not in done:
        figs = score(args.policy, red_val, helpful_val, args.max_new_tokens)
        with results_path.open("a") as f:
            f.write(json.dumps({"variant": "base-model", **figs}) + "\n")
    for name in args.variants.split(","):
        if name in done:
            continue
        v = variant(name)
        use_rows = rows
        if v.get("drop_new_red"):
            from cai.data import load_prompts
            new_red = {r.text for r in load_prompts(ROOT / "examples" / "prompts" / "red_team.jsonl")
                       [VALIDATION_POOL["red_team"]:]}
            use_rows = [r for r in rows if r["source_prompt"] not in new_red]
        sft_cfg = {**SFT, **v.get("sft", {})}
        weights = v.get("weights", {})
        decision = v.get("decision", [0, 1.0])
        skey = key([sft_cfg, weights] + (["openers"] if v.get("openers") else []) + ([v["lora"]] if "lora" in v else [])
                   + ([decision] if "decision" in v else []) + (["no-twins"] if v.get("drop_new_red") else []))
        sft_dir = out / f"sft-{skey}"
        t0 = time.time()
        if not (sft_dir / "model.safetensors").exists():
            use = vary_openers(use_rows) if v.get("openers") else use_rows
            data = write_dir(out / f"data-{skey}", "sft", weighted(use, weights), {"tune": skey})
            train_sft(data, args.policy, sft_dir, lora=v.get("lora", False),
                      decision_tokens=decision[0], decision_weight=decision[1], **train_args(sft_cfg))
        model = sft_dir
        if "dpo" in v:
            dpo_cfg = {**DPO, **v["dpo"]}
            pairs, _, _ = contrastive_pairs(vary_openers(use_rows) if v.get("openers") else use_rows, constitution)
            if v.get("onpolicy"):
                errors = onpolicy_pairs(str(sft_dir), use_rows, out / f"onpolicy-{skey}.jsonl", args.max_new_tokens)
                print(f"{name}: {len(errors)} on-policy error pairs", flush=True)
                pairs = pairs + errors
            dkey = key([skey, dpo_cfg] + (["onpolicy"] if v.get("onpolicy") else []))
            pref = write_dir(out / f"pairs-{skey}", "preference", weighted(pairs, weights), {"tune": skey})
            model = out / f"dpo-{dkey}"
            if not (model / "model.safetensors").exists():
                train_dpo(pref, str(sft_dir), model, **train_args(dpo_cfg))
        if "rehearsal" in v:  # as the rehearsal stage: the newest model, a few steps on the helpful rows
            reh_cfg = {**REHEARSAL, **v["rehearsal"]}
            red_share = v.get("rehearsal_red", 0.0)
            rkey = key([str(model), reh_cfg] + ([red_share] if red_share else []))
            reh = out / f"rehearsal-{rkey}"
            if not (reh / "model.safetensors").exists():
                reh_rows = [r for r in rows if r.get("set") == "helpful"]
                if red_share:  # replay: red-team refusals, red_share x the helpful row count, seeded
                    red = [r for r in rows if r.get("set") == "red_team"]
                    reh_rows += random.Random(0).sample(red, min(len(red), round(red_share * len(reh_rows))))
                    random.Random(1).shuffle(reh_rows)
                data = write_dir(out / f"rows-{rkey}", "sft", reh_rows, {"tune": rkey})
                train_sft(data, str(model), reh, **train_args(reh_cfg))
            model = reh
        if "merge" in v:
            merged = out / f"merge-{key([str(model), v['merge']])}"
            if not (merged / "model.safetensors").exists():
                interpolate(args.policy, str(model), v["merge"], merged)
            model = merged
        train_s = time.time() - t0
        figs = score(str(model), red_val, helpful_val, args.max_new_tokens)
        rec = {"variant": name, "train_seconds": round(train_s, 1), "sft": sft_cfg, "weights": weights,
               "merge": v.get("merge"),
               "dpo": v.get("dpo"), "rehearsal": v.get("rehearsal"), "rehearsal_red": v.get("rehearsal_red"),
               "decision": v.get("decision"),
               "distill_dir": args.distill_dir, **figs}
        with results_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{name}: harmful {figs['red_team_refusal']['rate']} benign {figs['benign_refusal']['rate']} "
              f"look {figs['benign_look_unsafe_refusal']['rate']} d2 {figs['benign_distinct_2']} "
              f"({train_s:.0f} s training)", flush=True)
    print_table(results_path)


def print_table(path: Path) -> None:
    def fmt(r: dict) -> str:
        return f"{r['rate']:.3f} [{r['low']:.2f},{r['high']:.2f}]" if r["rate"] is not None else "n/a"

    groups: dict[str, list[dict]] = {}
    print(f"\n{'variant':<22} {'refuses harmful':<22} {'refuses benign':<22} {'look-unsafe':<22} distinct-2")
    for line in path.open():
        r = json.loads(line)
        print(f"{r['variant']:<22} {fmt(r['red_team_refusal']):<22} {fmt(r['benign_refusal']):<22} "
              f"{fmt(r['benign_look_unsafe_refusal']):<22} {r['benign_distinct_2']:.3f}")
        groups.setdefault(r["variant"].partition("@")[0], []).append(r)
    seeded = {name: rs for name, rs in groups.items() if len(rs) > 1}
    if seeded:  # the run-to-run spread a single run's interval does not show
        print(f"\n{'over seeds':<22} {'harmful mean (min-max)':<22} {'benign':<22} {'look-unsafe':<22}")
        for name, rs in seeded.items():
            cells = []
            for fig in ("red_team_refusal", "benign_refusal", "benign_look_unsafe_refusal"):
                vals = [r[fig]["rate"] for r in rs if r[fig]["rate"] is not None]
                cells.append(f"{sum(vals) / len(vals):.3f} ({min(vals):.2f}-{max(vals):.2f})" if vals else "n/a")
            print(f"{name + f' x{len(rs)}':<22} " + " ".join(f"{c:<22}" for c in cells))


if __name__ == "__main__":
    main()
