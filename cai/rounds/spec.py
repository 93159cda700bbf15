"""What a round stage is: a declared object in a registry open to other packages.

A stage declares its name (also its config key, with ``-`` read as ``_``, and the
name of its module under ``cai/rounds/stages/``), its pydantic config, the
templates it renders, the stages of the same round it reads (``inputs``), the
run-level settings it reads (``uses``), and ``run(ctx)``. The runner
(`cai.rounds.runner`) does the rest: keys, resume or restart, manifest, timings.

A user's package adds a stage without editing cai: build a `RoundStage` and
either call `register_stage` or name it under the ``cai.stages`` entry-point
group (``[project.entry-points."cai.stages"] mine = "my_pkg.stage:STAGE"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

from cai.errors import UserInputError

if TYPE_CHECKING:
    from cai.rounds.context import StageContext


class NoConfig(BaseModel):
    """The config of a stage that has no settings of its own."""

    model_config = ConfigDict(extra="forbid")


#: Run-level settings most stages read; a stage's key hashes the ones it declares.
DEFAULT_USES = ("seed", "models.policy", "models.backend", "prompts", "template_dir")


@dataclass(frozen=True)
class RoundStage:
    name: str
    run: Callable[["StageContext"], dict[str, Any]]
    config: type[BaseModel] = NoConfig
    #: Stages of the same round whose outputs this one reads (their keys enter this one's key).
    inputs: tuple[str, ...] = ()
    #: Stages it reads when the pipeline has them (their keys enter this one's key then).
    optional_inputs: tuple[str, ...] = ()
    #: Whether it reads this round's new policy (the last model-producing stage before it).
    reads_new_policy: bool = False
    #: Dotted paths into the run config this stage reads besides its own section.
    uses: tuple[str, ...] = DEFAULT_USES
    #: Whether it reads the round's starting policy (then the previous round's policy stage is an input).
    reads_policy: bool = False
    #: Whether its output directory is a model that can be the next round's policy.
    produces_policy: bool = False
    #: Training and small derived outputs start over when interrupted; datasets resume row by row.
    restart: bool = False
    #: A training stage that checkpoints: interrupted, it keeps its directory and resumes from its last
    #: checkpoint (`ctx.fresh` is False then), even though it is a restart stage otherwise.
    checkpoints: bool = False
    #: Templates it renders (validated before any model loads).
    templates: tuple[str, ...] = ()
    description: str = ""
    #: Extra checks on the resolved run config, before any model loads (raise UserInputError).
    check: Callable[[Any, str], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config_key(self) -> str:
        return self.name.replace("-", "_")


_REGISTRY: dict[str, RoundStage] = {}
_BUILTIN = ("revisions", "helpful", "distill", "sft_data", "sft", "preferences", "scored_pairs", "contrastive", "reward",
            "rl", "dpo", "rehearsal", "eval")
_loaded = False

#: The card's chain, in order: what `cai run` does when the config names no pipeline.
DEFAULT_PIPELINE = ("revisions", "helpful", "sft-data", "sft", "preferences", "reward", "rl", "eval")


def register_stage(stage: RoundStage, *, replace: bool = False) -> RoundStage:
    """Add a stage to the registry (a user's package calls this, or names it as an entry point)."""
    if stage.name in _REGISTRY and not replace and _REGISTRY[stage.name] is not stage:
        raise ValueError(f"a stage named {stage.name!r} is already registered; pass replace=True to swap it")
    _REGISTRY[stage.name] = stage
    return stage


def stage_registry(*, rescan: bool = False) -> dict[str, RoundStage]:
    """Every known stage: the built-in ones, then those from ``cai.stages`` entry points.

    Entry points are read once per process; ``rescan=True`` reads them again
    (after installing a plugin into a running interpreter).
    """
    global _loaded
    if rescan or not _loaded:
        _loaded = True
        for mod in _BUILTIN:
            import_module(f"cai.rounds.stages.{mod}")
        for ep in entry_points(group="cai.stages"):
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must not take the CLI down with a traceback
                raise UserInputError(f"entry point cai.stages:{ep.name} ({ep.value}) failed to load: {e}") from None
            if isinstance(obj, RoundStage) and obj.name not in _REGISTRY:
                register_stage(obj)
    return _REGISTRY


def get_stage(name: str) -> RoundStage:
    reg = stage_registry()
    if name not in reg:
        raise UserInputError(f"unknown stage {name!r}; known stages: {', '.join(sorted(reg))}")
    return reg[name]


__all__ = ["RoundStage", "NoConfig", "register_stage", "stage_registry", "get_stage", "DEFAULT_PIPELINE"]
