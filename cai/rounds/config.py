"""The run config of `cai run`: run-level settings plus one section per registered stage.

The ``stages`` section is built from the stage registry, so a stage added by
another package gets its own validated section (unknown keys are errors, with
file:line) without any edit here.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from cai.errors import UserInputError
from cai.rounds.spec import DEFAULT_PIPELINE, get_stage, stage_registry
from cai.yamlfile import load_yaml_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelsConfig(_Strict):
    policy: str = Field("smollm2-135m", description="Round 0 policy: embedded name, local dir or hub id.")
    feedback: str | None = Field(None, description=(
        "Feedback model (the one that labels, critiques and judges): 'policy' = the policy round k starts "
        "from (round k-1's final model: self-rewarding), a fixed model spec, or null = the round 0 policy."))
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
    validation: int = Field(0, ge=0, description="Prompts per training set held out as a validation slice (seeded, "
                                                  "never trained on); eval reports the outcome on it too. Choose "
                                                  "settings on it, never on the eval sets.")
    labelled_pairs: str | None = Field(None, description=(
        "Pairs whose better response is known (examples/labelled_pairs.jsonl), never trained on: the "
        "feedback model is measured on them per direction, and label_source: auto reads the figures."))


class RunConfigBase(_Strict):
    name: str = "cai-run"
    seed: int = 0
    rounds: int = Field(1, ge=1)
    chunk_size: int = Field(16, ge=1, description="Prompts per saved chunk in data stages; a kill loses at most one.")
    constitution: str = "harmless"
    template_dir: str | None = None
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    prompts: PromptsConfig
    pipeline: list[str] = Field(default_factory=lambda: list(DEFAULT_PIPELINE),
                                description="The stages of each round, in order (registered stage names).")
    pipeline_from: dict[int, list[str]] = Field(default_factory=dict, description=(
        "From round N on, this pipeline instead of `pipeline` ({2: [scored-pairs, dpo, eval]}): round 1 may "
        "bootstrap from the constitution's text, later rounds learn from the model's own feedback."))
    stages: Any = None
    stages_from: dict[int, dict[str, dict[str, Any]]] = Field(default_factory=dict, description=(
        "From round N on, these settings over `stages` ({2: {dpo: {if_untrusted: skip}}}), merged key by key, "
        "later entries over earlier ones: later rounds change a stage without changing round 1's, so a "
        "finished run continued with more rounds keeps the rounds it has."))

    @field_validator("name")
    @classmethod
    def _name_is_a_dir_name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("name must be a plain directory name")
        return v

    @field_validator("pipeline")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        return check_pipeline(v)

    @field_validator("pipeline_from")
    @classmethod
    def _later_pipelines(cls, v: dict[int, list[str]]) -> dict[int, list[str]]:
        for k, stages in v.items():
            if k < 2:
                raise ValueError(f"pipeline_from: round {k}: a later pipeline starts at round 2 or after; "
                                 "round 1's is `pipeline`")
            check_pipeline(stages)
        return dict(sorted(v.items()))

    def pipeline_of(self, k: int) -> list[str]:
        """Round k's stages: the latest ``pipeline_from`` entry at or before k, else ``pipeline``."""
        starts = [n for n in self.pipeline_from if n <= k]
        return list(self.pipeline_from[max(starts)]) if starts else list(self.pipeline)

    def all_stages(self) -> list[str]:
        """Every stage any round runs, each once, in first-seen order."""
        return list(dict.fromkeys([*self.pipeline, *(s for p in self.pipeline_from.values() for s in p)]))

    @field_validator("stages_from")
    @classmethod
    def _later_settings(cls, v: dict[int, dict[str, dict[str, Any]]]) -> dict[int, dict[str, dict[str, Any]]]:
        for k in v:
            if k < 2:
                raise ValueError(f"stages_from: round {k}: later settings start at round 2 or after; "
                                 "round 1's are `stages`")
        return dict(sorted(v.items()))

    def section(self, stage: str, k: int | None = None) -> BaseModel:
        """The config section of a stage (its defaults when the file has none); for round k, with
        every ``stages_from`` entry at or before k merged over it."""
        key = get_stage(stage).config_key
        base = getattr(self.stages, key)
        layers = [self.stages_from[n][key] for n in self.stages_from if k is not None and n <= k
                  and key in self.stages_from[n]]
        if not layers:
            return base
        merged = base.model_dump()
        for layer in layers:
            merged = _merge(merged, layer)
        return type(base).model_validate(merged)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_pipeline(v: list[str]) -> list[str]:
    """Known stages, each once, every stage's inputs (and new policy) before it."""
    known = stage_registry()
    for name in v:
        if name not in known:
            raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(sorted(known))}")
    if len(set(v)) != len(v):
        raise ValueError("a stage is listed twice; list each once")
    for i, name in enumerate(v):
        for dep in known[name].inputs:
            if dep not in v[:i]:
                raise ValueError(f"stage {name!r} reads {dep!r}, which must come before it in the pipeline")
        if known[name].reads_new_policy and not any(known[s].produces_policy for s in v[:i]):
            raise ValueError(f"stage {name!r} reads the round's new policy; put a training stage before it")
    return v


@functools.cache
def _run_config_class(sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[RunConfigBase]:
    fields: dict[str, Any] = {key: (cls, Field(default_factory=cls)) for key, cls in sections}
    stages = create_model("StagesConfig", __base__=_Strict, **fields)
    return create_model("RunConfig", __base__=RunConfigBase, stages=(stages, Field(default_factory=stages)))


def run_config_class() -> type[RunConfigBase]:
    """RunConfig for the stages registered now (built once per set of stages)."""
    reg = stage_registry()
    return _run_config_class(tuple((s.config_key, s.config) for s in reg.values()))


def _resolve_path(value: str | None, base: Path) -> str | None:
    """Relative paths: against the current directory, else the config file's directory."""
    if value is None:
        return None
    p = Path(value)
    if p.is_absolute() or p.exists() or not (base / p).exists():
        return value
    return str(base / p)


def load_run_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> RunConfigBase:
    """Load, validate and check a run config before anything heavy happens.

    Checks: the schema (unknown keys are errors with file:line), each stage's own
    checks (TRL fields of training sections), the constitution, its templates and
    each prompt file.
    """
    cfg = load_yaml_model(path, run_config_class())
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    base = Path(path).resolve().parent
    p = cfg.prompts
    cfg.prompts = p.model_copy(update={k: _resolve_path(getattr(p, k), base)
                                       for k in ("red_team", "helpful", "eval_red_team", "eval_helpful",
                                                 "labelled_pairs")})
    if cfg.template_dir:
        cfg.template_dir = _resolve_path(cfg.template_dir, base)
    if Path(cfg.constitution).suffix and not Path(cfg.constitution).exists():
        cfg.constitution = _resolve_path(cfg.constitution, base) or cfg.constitution
    check_run_config(cfg, source=str(path))
    return cfg


def check_run_config(cfg: RunConfigBase, *, source: str) -> None:
    from pydantic import ValidationError

    from cai.constitution import load_constitution
    from cai.templates import TEMPLATE_VARIABLES, PromptTemplates

    keys = {get_stage(n).config_key: n for n in cfg.all_stages()}
    for k, layer in cfg.stages_from.items():
        for key in layer:
            if key not in keys:
                raise UserInputError(f"{source}: stages_from.{k}.{key}: no stage of this run has that section; "
                                     f"use one of: {', '.join(keys)}")
            try:
                cfg.section(keys[key], k)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(x) for x in err["loc"])
                raise UserInputError(f"{source}: stages_from.{k}.{key}.{where}: {err['msg']}") from None
    names: list[str] = []
    for name in cfg.all_stages():
        stage = get_stage(name)
        if stage.check is not None:
            stage.check(cfg, source)
        names += [t for t in stage.templates if t not in names]
    constitution = load_constitution(cfg.constitution)
    templates = PromptTemplates(cfg.template_dir, constitution=constitution)
    templates.validate({n: TEMPLATE_VARIABLES[n] for n in names})
    for name in ("red_team", "helpful", "eval_red_team", "eval_helpful", "labelled_pairs"):
        value = getattr(cfg.prompts, name)
        if value is not None and not Path(value).exists():
            raise UserInputError(f"{source}: prompts.{name}: {value} not found; fix the path")
    if cfg.prompts.labelled_pairs:
        from cai.labelled_pairs import load_labelled_pairs

        try:
            load_labelled_pairs(cfg.prompts.labelled_pairs)
        except UserInputError as e:
            raise UserInputError(f"{source}: prompts.labelled_pairs: {e}") from None


#: Settings left out of their section's hash: only the stages that declare them (by full path) read them.
#: The labelled pair set measures feedback models and trains nothing, so setting it reruns no
#: training stage, and a run begun before it existed resumes.
_DECLARED_ONLY = {"prompts": {"labelled_pairs"}}


def lookup(cfg: RunConfigBase, dotted: str) -> Any:
    """A run-level setting by dotted path (``models.policy``), as plain data for hashing."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    if isinstance(node, BaseModel):
        return node.model_dump(mode="json", exclude=_DECLARED_ONLY.get(dotted))
    return node


__all__ = ["ModelsConfig", "PromptsConfig", "RunConfigBase", "run_config_class", "load_run_config",
           "check_run_config", "lookup"]
