"""Iterative self-improvement rounds: the orchestrator behind `cai run`.

Round k, in order (each a *stage* with its own directory under ``RUN_DIR/round-k/``):

1. ``revisions``   critique-and-revise the red-team prompts with policy_k
2. ``helpful``     policy_k's own responses to helpful prompts (so SFT does not learn to refuse all)
3. ``sft-data``    mix of 1 and 2 (``stages.sft.helpful_fraction``)
4. ``sft``         SFT of policy_k on 3
5. ``preferences`` AI preference labels, SFT model as policy, the configured feedback model
6. ``reward``      reward model on 5 (soft labels)
7. ``rl``          PPO (default), RLOO, GRPO or DPO -> policy_{k+1}
8. ``eval``        policy_{k+1} against round 0 and round k-1 on held-out prompts

The run directory holds ``config.yaml`` (resolved), ``manifest.json`` and each stage's
output. A stage's *key* hashes its own config section and its inputs' keys, so a
change upstream invalidates what follows; a finished stage whose config changed is
refused unless forced. Dataset stages resume row by row; training stages restart.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.data import DatasetWriter, PromptRecord, load_prompts, read_rows, stable_hash
from cai.errors import UserInputError
from cai.evaluation.runner import EvalConfig
from cai.stages.label import LabelConfig
from cai.stages.revise import ReviseConfig
from cai.yamlfile import load_yaml_model

log = logging.getLogger(__name__)

STAGES = ("revisions", "helpful", "sft-data", "sft", "preferences", "reward", "rl", "eval")
MANIFEST = "manifest.json"
#: Stages that start over when interrupted (training, small derived files); the others resume row by row.
RESTARTED_STAGES = ("sft-data", "sft", "reward", "rl", "eval")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelsConfig(_Strict):
    policy: str = Field("smollm2-135m", description="Round 0 policy: embedded name, local dir or hub id.")
    feedback: str | None = Field(None, description="Feedback (labeller/judge) model; default: the round 0 policy.")
    backend: str = Field("transformers", description="Generation backend kind.")
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    dtype: str = "auto"


class PromptsConfig(_Strict):
    red_team: str = Field(description="Red-team prompt set (revisions, preferences, RL, harmlessness eval).")
    helpful: str = Field(description="Benign prompt set (SFT mix, RL, over-refusal eval).")
    eval_red_team: str | None = Field(None, description="Held-out red-team prompts; default: hold out `held_out`.")
    eval_helpful: str | None = Field(None, description="Held-out benign prompts; default: hold out `held_out`.")
    held_out: int = Field(8, ge=1, description="Prompts per set held out for eval when no eval set is given.")
    per_round: int | None = Field(None, ge=1, description="Training prompts per set per round (a new slice each round).")


class ResponsesConfig(_Strict):
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)


class TrainSection(_Strict):
    config: dict[str, Any] = Field(default_factory=dict, description="TRL config fields for this trainer.")
    lora: bool = False


class SFTSection(TrainSection):
    helpful_fraction: float = Field(0.5, ge=0, lt=1, description="Share of SFT rows that are helpful responses.")


class RLSection(TrainSection):
    algorithm: Literal["ppo", "rloo", "grpo", "dpo"] = "ppo"
    judge: bool = Field(False, description="rloo/grpo: add the constitution judge as a reward function.")


class StagesConfig(_Strict):
    revise: ReviseConfig = Field(default_factory=ReviseConfig)
    helpful: ResponsesConfig = Field(default_factory=ResponsesConfig)
    sft: SFTSection = Field(default_factory=SFTSection)
    preferences: LabelConfig = Field(default_factory=LabelConfig)
    reward: TrainSection = Field(default_factory=TrainSection)
    rl: RLSection = Field(default_factory=RLSection)
    eval: EvalConfig = Field(default_factory=EvalConfig)


class RunConfig(_Strict):
    name: str = "cai-run"
    seed: int = 0
    rounds: int = Field(1, ge=1)
    chunk_size: int = Field(16, ge=1, description="Prompts per saved chunk in data stages; a kill loses at most one.")
    constitution: str = "harmless"
    template_dir: str | None = None
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    prompts: PromptsConfig
    stages: StagesConfig = Field(default_factory=StagesConfig)

    @field_validator("name")
    @classmethod
    def _name_is_a_dir_name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("name must be a plain directory name")
        return v


# --- config ----------------------------------------------------------------------------


def _resolve_path(value: str | None, base: Path) -> str | None:
    """Relative paths: against the current directory, else the config file's directory."""
    if value is None:
        return None
    p = Path(value)
    if p.is_absolute() or p.exists() or not (base / p).exists():
        return value
    return str(base / p)


def load_run_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load, validate and check a run config before anything heavy happens.

    Checks: the schema (unknown keys are errors with file:line), every TRL field of
    every training section, the constitution, its templates, and each prompt file.
    """
    cfg = load_yaml_model(path, RunConfig)
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    base = Path(path).resolve().parent
    p = cfg.prompts
    cfg.prompts = p.model_copy(update={k: _resolve_path(getattr(p, k), base)
                                       for k in ("red_team", "helpful", "eval_red_team", "eval_helpful")})
    if cfg.template_dir:
        cfg.template_dir = _resolve_path(cfg.template_dir, base)
    if Path(cfg.constitution).suffix and not Path(cfg.constitution).exists():
        cfg.constitution = _resolve_path(cfg.constitution, base) or cfg.constitution
    check_run_config(cfg, source=str(path))
    return cfg


def check_run_config(cfg: RunConfig, *, source: str) -> None:
    from cai.constitution import load_constitution
    from cai.templates import TEMPLATE_VARIABLES, PromptTemplates
    from cai.training import check_config_fields

    s = cfg.stages
    check_config_fields("sft", s.sft.config, f"{source}: stages.sft.config")
    check_config_fields("reward", s.reward.config, f"{source}: stages.reward.config")
    check_config_fields(s.rl.algorithm, s.rl.config, f"{source}: stages.rl.config")
    if s.rl.judge and s.rl.algorithm not in ("rloo", "grpo"):
        raise UserInputError(f"{source}: stages.rl.judge works with rloo or grpo only; set algorithm or drop judge")
    constitution = load_constitution(cfg.constitution)
    templates = PromptTemplates(cfg.template_dir, constitution=constitution)
    templates.validate({n: TEMPLATE_VARIABLES[n] for n in
                        ("initial_response", "critique", "revision", "preference", "preference_cot")})
    for name in ("red_team", "helpful", "eval_red_team", "eval_helpful"):
        value = getattr(cfg.prompts, name)
        if value is not None and not Path(value).exists():
            raise UserInputError(f"{source}: prompts.{name}: {value} not found; fix the path")


# --- manifest --------------------------------------------------------------------------


class RunManifest:
    """The run's record: per stage its status, key, config hash, outputs, timings and summary."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / MANIFEST
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def update(self, name: str, **fields: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str), encoding="utf-8")
        tmp.replace(self.path)


# --- the runner --------------------------------------------------------------------------


class Run:
    """One run directory; `execute` runs (or resumes) every round's stages in order."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        force: tuple[str, ...] = (),
        progress: bool = True,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.progress = progress
        self.echo = echo
        self.force = set(force)
        for f in self.force:
            if f.split("/")[-1] not in STAGES:
                raise UserInputError(f"--force {f}: no such stage; use one of: {', '.join(STAGES)}")
        if (self.dir / MANIFEST).exists() and not resume:
            raise UserInputError(f"{self.dir}: a run is already here; add --resume to continue it, or use a new --out")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = RunManifest(self.dir)
        self._constitution = None
        self._backends: dict[str, Any] = {}
        self._split: tuple[list[PromptRecord], ...] | None = None

    # --- shared resources ---------------------------------------------------------------

    @property
    def constitution(self):
        if self._constitution is None:
            from cai.constitution import load_constitution

            self._constitution = load_constitution(self.cfg.constitution)
        return self._constitution

    def templates(self):
        from cai.templates import PromptTemplates

        return PromptTemplates(self.cfg.template_dir, constitution=self.constitution)

    def backend(self, spec: str):
        """One loaded backend per model spec, dropped when training needs the memory back."""
        if spec not in self._backends:
            from cai.backends import make_backend

            m = self.cfg.models
            self._backends[spec] = make_backend(spec, kind=m.backend, batch_size=m.batch_size, device=m.device,
                                                dtype=m.dtype, progress=self.progress)
        return self._backends[spec]

    def release_backends(self) -> None:
        self._backends.clear()
        import gc

        gc.collect()

    def prompt_split(self) -> tuple[list[PromptRecord], list[PromptRecord], list[PromptRecord], list[PromptRecord]]:
        """(train red-team, train helpful, eval red-team, eval helpful), fixed by the seed."""
        if self._split is None:
            p = self.cfg.prompts
            out = []
            for train_path, eval_path in ((p.red_team, p.eval_red_team), (p.helpful, p.eval_helpful)):
                recs = load_prompts(train_path)
                if eval_path:
                    out.append((recs, load_prompts(eval_path)))
                    continue
                shuffled = list(recs)
                random.Random(self.cfg.seed).shuffle(shuffled)
                if len(shuffled) <= p.held_out:
                    raise UserInputError(f"{train_path}: {len(shuffled)} prompts, not more than held_out={p.held_out}; "
                                         "add prompts or lower prompts.held_out")
                out.append((shuffled[p.held_out:], shuffled[: p.held_out]))
            self._split = (out[0][0], out[1][0], out[0][1], out[1][1])
        return self._split

    def round_prompts(self, k: int, which: int) -> list[PromptRecord]:
        recs = self.prompt_split()[which]
        n = self.cfg.prompts.per_round
        if not n or n >= len(recs):
            return recs
        start = ((k - 1) * n) % len(recs)
        return (recs + recs)[start : start + n]

    # --- stage bookkeeping ---------------------------------------------------------------

    def policy_spec(self, k: int) -> str:
        """policy_k: the configured model for round 1, else round k-1's RL output."""
        return self.cfg.models.policy if k <= 1 else str(self.dir / f"round-{k - 1}" / "rl")

    def stage_dir(self, k: int, stage: str) -> Path:
        return self.dir / f"round-{k}" / stage

    def _stage_config(self, k: int, stage: str) -> dict[str, Any]:
        c, s = self.cfg, self.cfg.stages
        models = c.models.model_dump()
        section = {
            "revisions": {"revise": s.revise.model_dump(), "constitution": c.constitution},
            "helpful": {"helpful": s.helpful.model_dump()},
            "sft-data": {"helpful_fraction": s.sft.helpful_fraction},
            "sft": {"sft": s.sft.model_dump()},
            "preferences": {"preferences": s.preferences.model_dump(), "feedback": models["feedback"],
                            "constitution": c.constitution},
            "reward": {"reward": s.reward.model_dump()},
            "rl": {"rl": s.rl.model_dump()},
            "eval": {"eval": s.eval.model_dump(), "constitution": c.constitution},
        }[stage]
        return {**section, "policy": models["policy"], "backend": models["backend"], "prompts": c.prompts.model_dump(),
                "seed": c.seed, "template_dir": c.template_dir}

    def _inputs(self, k: int, stage: str) -> list[str]:
        i = STAGES.index(stage)
        previous_round_rl = [f"round-{k - 1}/rl", f"round-{k - 1}/eval"] if k > 1 else []
        here = [f"round-{k}/{s}" for s in STAGES[:i]]
        return previous_round_rl + here

    def _key(self, k: int, stage: str) -> tuple[str, str]:
        config_hash = stable_hash(self._stage_config(k, stage), length=64)
        upstream = [self.manifest.stage(name).get("key", "") for name in self._inputs(k, stage)]
        return config_hash, stable_hash(config_hash, upstream, length=64)

    def _forced(self, k: int, stage: str) -> bool:
        return stage in self.force or f"round-{k}/{stage}" in self.force

    def check_finished_stages(self) -> None:
        """Refuse a resume whose config changed for a finished stage (unless forced)."""
        for k in range(1, self.cfg.rounds + 1):
            for stage in STAGES:
                name = f"round-{k}/{stage}"
                rec = self.manifest.stage(name)
                if rec.get("status") != "complete" or self._forced(k, stage):
                    continue
                config_hash, _ = self._key(k, stage)
                if rec.get("config_hash") != config_hash:
                    raise UserInputError(
                        f"{self.dir}: stage {name} finished with another config; rerun with --force {stage} "
                        f"to redo it (and everything after it), or use a new --out"
                    )

    # --- execution -----------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        self.check_finished_stages()
        self.prompt_split()  # bad prompt files fail here, before any model loads
        # Only now, once the config is accepted, does it become the run's record.
        self.manifest.data.update(name=self.cfg.name, rounds=self.cfg.rounds)
        self.manifest.save()
        (self.dir / "config.yaml").write_text(
            yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        runners = {
            "revisions": self._revisions, "helpful": self._helpful, "sft-data": self._sft_data, "sft": self._sft,
            "preferences": self._preferences, "reward": self._reward, "rl": self._rl, "eval": self._eval,
        }
        stale = False  # once a stage runs, everything after it must run too
        for k in range(1, self.cfg.rounds + 1):
            for stage in STAGES:
                name = f"round-{k}/{stage}"
                config_hash, key = self._key(k, stage)
                rec = self.manifest.stage(name)
                forced = self._forced(k, stage)
                if rec.get("status") == "complete" and rec.get("key") == key and not (stale or forced):
                    self.echo(f"[{name}] done, skipping")
                    continue
                # An interrupted stage with the same inputs picks up its rows; anything else starts clean.
                resumable = rec.get("status") == "running" and rec.get("key") == key and not forced
                stale = True
                out = self.stage_dir(k, stage)
                if stage in RESTARTED_STAGES and out.exists():
                    shutil.rmtree(out)
                self.echo(f"[{name}] {'resuming' if resumable else 'running'}")
                started = time.time()
                self.manifest.update(name, status="running", key=key, config_hash=config_hash, started=started,
                                     output=str(out.relative_to(self.dir)))
                summary = runners[stage](k, out, not resumable)
                self.manifest.update(name, status="complete", finished=time.time(),
                                     seconds=round(time.time() - started, 1), summary=summary)
                self.echo(f"[{name}] finished in {time.time() - started:.0f}s")
        self.release_backends()
        return self.manifest.data

    # --- the stages ----------------------------------------------------------------------

    def _revisions(self, k: int, out: Path, fresh: bool) -> dict[str, Any]:
        from cai.stages.revise import run_revisions

        backend = self.backend(self.policy_spec(k))
        res = run_revisions(self.round_prompts(k, 0), out, self.constitution, backend,
                            config=self.cfg.stages.revise, templates=self.templates(), overwrite=fresh,
                            progress=self.progress, chunk_size=self.cfg.chunk_size)
        return _counts(res)

    def _helpful(self, k: int, out: Path, fresh: bool) -> dict[str, Any]:
        from cai.backends.base import SamplingParams
        from cai.stages.responses import run_responses

        h = self.cfg.stages.helpful
        params = SamplingParams(max_new_tokens=h.max_new_tokens, temperature=h.temperature, top_p=h.top_p,
                                seed=self.cfg.seed + k)
        res = run_responses(self.round_prompts(k, 1), out, self.backend(self.policy_spec(k)), params=params,
                            templates=self.templates(), constitution=self.constitution, overwrite=fresh,
                            progress=self.progress, chunk_size=self.cfg.chunk_size)
        return _counts(res)

    def _sft_data(self, k: int, out: Path, fresh: bool) -> dict[str, Any]:
        revisions = read_rows(self.stage_dir(k, "revisions"))
        helpful = read_rows(self.stage_dir(k, "helpful"))
        frac = self.cfg.stages.sft.helpful_fraction
        want = round(len(revisions) * frac / (1 - frac)) if frac > 0 else 0
        rng = random.Random(self.cfg.seed + k)
        chosen = rng.sample(helpful, min(want, len(helpful)))
        rows = [{**r, "source": "revision"} for r in revisions] + [
            {"id": r["id"], "messages": r["messages"], "prompt": r["prompt"], "source": "helpful"} for r in chosen]
        if not rows:
            raise UserInputError(
                f"{self.stage_dir(k, 'revisions')}: no usable revisions or helpful responses to train on; "
                "see failures.jsonl there (raise max_new_tokens or stages.revise.retries)")
        rng.shuffle(rows)
        writer = DatasetWriter(out, kind="sft", overwrite=True,
                               fingerprint={"stage": "sft-data", "helpful_fraction": frac, "round": k})
        writer.write(rows)
        return writer.finalize({"revision_rows": len(revisions), "helpful_rows": len(chosen),
                                "helpful_fraction_actual": round(len(chosen) / len(rows), 3)},
                               title=f"cai round {k} SFT mix")["summary"]

    def _sft(self, k: int, out: Path, fresh: bool) -> dict[str, Any]:
        from cai.training import train_sft

        self.release_backends()
        s = self.cfg.stages.sft
        res = train_sft(self.stage_dir(k, "sft-data"), self.policy_spec(k), out, config=s.config, lora=s.lora)
        return _train_summary(res.summary)

    def _preferences(self, k: int, out: Path, fresh: bool) -> dict[str, Any]:
        from cai.stages.label import run_preferences

        policy = self.backend(str(self.stage_dir(k, "sft")))
        feedback = self.backend(self.cfg.models.feedback or self.cfg.models.policy)
        res = run_preferences(self.round_prompts(k, 0), out, self.constitution, policy, feedback,
                              config=self.cfg.stages.preferences, templates=self.templates(), overwrite=fresh,
                              progress=self.progress, chunk_size=self.cfg.chunk_size)
        return _counts(res)

    def _reward(self, k: int, out: Path, fresh: bool) -> dict[str, Any]:
        from cai.training import train_reward

        self.release_backends()
        s = self.cfg.stages.reward
        # The reward model starts from the round 0 policy's weights, as a fresh judge of the policy.
        res = train_reward(self.stage_dir(k, "preferences"), self.cfg.models.policy, out, config=s.config,
                           lora=s.lora)
        return _train_summary(res.summary)

    def _rl(self, k: int, out: Path, fresh: bool) -> dict[str, Any]:
        from cai import training

        self.release_backends()
        s = self.cfg.stages.rl
        sft_model = str(self.stage_dir(k, "sft"))
        reward_model = str(self.stage_dir(k, "reward"))
        prompts = self.round_prompts(k, 0) + self.round_prompts(k, 1)
        if s.algorithm == "dpo":
            res = training.train_dpo(self.stage_dir(k, "preferences"), sft_model, out, config=s.config, lora=s.lora)
        elif s.algorithm == "ppo":
            res = training.train_ppo(prompts, sft_model, reward_model, out, config=s.config, lora=s.lora)
        else:
            judge = None
            if s.judge:
                from cai.judge import ConstitutionJudge

                judge = ConstitutionJudge(self.constitution, self.backend(self.cfg.models.feedback or
                                                                          self.cfg.models.policy),
                                          templates=self.templates()).as_reward_func()
            fn = training.train_rloo if s.algorithm == "rloo" else training.train_grpo
            res = fn(prompts, sft_model, out, reward_model=reward_model, judge=judge, config=s.config, lora=s.lora)
        return _train_summary(res.summary)

    def _eval(self, k: int, out: Path, fresh: bool) -> dict[str, Any]:
        """policy_{k+1} (this round's RL output) against round 0 and, from round 2, round k-1."""
        from cai.evaluation import evaluate_models
        from cai.evaluation.metrics import win_rate

        _, _, eval_red, eval_benign = self.prompt_split()
        cand = f"round-{k}"
        models = {"round-0": self.cfg.models.policy}
        if k > 1:
            models[f"round-{k - 1}"] = self.policy_spec(k)
        models[cand] = str(self.stage_dir(k, "rl"))
        judge_spec = self.cfg.models.feedback or self.cfg.models.policy
        full = evaluate_models(
            models, eval_red, eval_benign, self.constitution, self.backend(judge_spec), baseline="round-0",
            reward_model=str(self.stage_dir(k, "reward")), templates=self.templates(), config=self.cfg.stages.eval,
            backend_factory=self.backend,
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
        per = full["models"]
        responses = {name: {s["prompt"]: s["response"] for s in per[name].get("samples", [])} for name in per}
        win_rates = {"vs round-0": per[cand]["win_rate"]}
        if k > 1:  # the same responses, judged against the previous round's (one batched compare)
            from cai.judge import ConstitutionJudge

            e = self.cfg.stages.eval
            judge = ConstitutionJudge(self.constitution, self.backend(judge_spec), templates=self.templates(),
                                      principles=e.principles, both_orders=e.both_orders, seed=e.seed)
            prev = f"round-{k - 1}"
            records = list({r.id: r for r in eval_red + eval_benign}.values())
            verdicts = judge.compare([r.messages for r in records], [responses[cand][r.text] for r in records],
                                     [responses[prev][r.text] for r in records])
            win_rates[f"vs {prev}"] = win_rate(verdicts).to_dict()
        metrics = {
            "win_rates": win_rates,
            "refusal": {name: {
                "red_team_refusal_rate": (m.get("harmlessness") or {}).get("refusal_rate", {}).get("rate"),
                "judge_harmful_rate": ((m.get("harmlessness") or {}).get("judge") or {}).get("harmful_rate"),
                "benign_refusal_rate": (m.get("over_refusal") or {}).get("rate"),
            } for name, m in per.items()},
            "reward": {name: ((m.get("reward") or {}).get("all") or {}).get("mean") for name, m in per.items()},
            "samples": [{"prompt": prompt, **{name: responses[name].get(prompt) for name in models}}
                        for prompt in list(responses[cand])[:6]],
        }
        prefs = json.loads((self.stage_dir(k, "preferences") / "cai_dataset.json").read_text())
        metrics["labeller"] = prefs.get("summary", {}).get("labeller", {})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
        return {key: metrics[key] for key in ("win_rates", "refusal", "reward")}


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    return {"counts": result.get("counts", {}), **{k: v for k, v in result.get("summary", {}).items()
                                                   if k in ("new_rows", "new_failed", "completion_tokens_per_s")}}


def _train_summary(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("steps", "seconds", "final_loss", "eval", "final_metrics")
    return {k: summary[k] for k in keep if k in summary}


def run_rounds(
    config: str | Path | RunConfig,
    run_dir: str | Path | None = None,
    *,
    rounds: int | None = None,
    resume: bool = False,
    force: tuple[str, ...] = (),
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) self-improvement rounds; returns the manifest."""
    cfg = config if isinstance(config, RunConfig) else load_run_config(config)
    if rounds is not None:
        cfg = cfg.model_copy(update={"rounds": rounds})
    run = Run(cfg, run_dir or Path("runs") / cfg.name, resume=resume, force=force, progress=progress, echo=echo)
    return run.execute()


def run_status(run_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per stage the run has started: name, status, seconds, output."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        raise UserInputError(f"{run_dir}: no {MANIFEST}; not a cai run directory")
    data = json.loads(path.read_text(encoding="utf-8"))
    rounds = int(data.get("rounds", 1))
    out = []
    for k in range(1, rounds + 1):
        for stage in STAGES:
            name = f"round-{k}/{stage}"
            rec = data["stages"].get(name, {})
            out.append({"stage": name, "status": rec.get("status", "pending"), "seconds": rec.get("seconds"),
                        "output": rec.get("output")})
    return out


__all__ = ["RunConfig", "Run", "RunManifest", "load_run_config", "run_rounds", "run_status", "STAGES"]
