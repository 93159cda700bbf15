"""What a trainer is: a declared object in a registry open to other packages.

A `TrainerSpec` names TRL's config and trainer classes (as ``"module:Name"``,
imported on first use, so declaring one imports no trl), cai's defaults for the
config, the dataset kind it takes, how those rows become its dataset, how the
trainer is built from a `TrainJob`, and what it adds to ``training_summary.json``.
One `cai.training.runner.train` runs every spec: data checks and config
validation before any model loads, seeding, training, saving.

A user's package adds a trainer without editing cai: build a `TrainerSpec` and
either call `register_trainer` or name it under the ``cai.trainers`` entry-point
group (``[project.entry-points."cai.trainers"] kto = "my_pkg.kto:SPEC"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping

from cai.errors import UserInputError

#: A class given by reference: the class itself, ``"module:Name"``, or a function returning it.
ClassRef = Any


def resolve_class(ref: ClassRef) -> type:
    """The class behind a `ClassRef` (imports its module on first use)."""
    if isinstance(ref, type):
        return ref
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        return getattr(import_module(module), name)
    return ref()


@dataclass
class TrainJob:
    """One training run as it is being set up: what the spec's hooks read and fill in."""

    spec: "TrainerSpec"
    source: Any  # a dataset directory, a prompt file, or a list of PromptRecord
    model: str
    out_dir: Path
    lora: bool | dict[str, Any] = False  # True, or peft LoraConfig settings over cai's
    #: The spec's own (non-TRL) options, defaults filled in; hooks may resolve them (e.g. soft_labels).
    options: dict[str, Any] = field(default_factory=dict)
    config: Any = None  # the TRL config object
    settings: dict[str, Any] = field(default_factory=dict)  # the fields it was built from
    rows: list[Any] = field(default_factory=list)  # the trainer's dataset rows
    info: dict[str, Any] = field(default_factory=dict)  # summary["data"]: provenance and counts
    tokenizer: Any = None  # saved with the model

    @property
    def where(self) -> str:
        return str(self.source) if not isinstance(self.source, (list, tuple)) else "prompts"


def _no_summary(trainer: Any, job: TrainJob) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class TrainerSpec:
    #: The trainer's name: ``cai train <name>``, ``stages.rl.algorithm``, ``check_config_fields(name, ...)``.
    name: str
    #: TRL's config class (``"trl:SFTConfig"``); its fields are the trainer's settings.
    config_class: ClassRef
    #: TRL's trainer class (``"trl:SFTTrainer"``), used by the default ``build``.
    trainer_class: ClassRef
    #: The dataset kind it reads: a cai dataset kind (``sft``, ``preference``) or ``prompts`` (a prompt set).
    data_kind: str
    #: `rows(raw, job) -> list`: the dataset's rows (or prompt records) as the trainer's dataset rows.
    rows: Callable[[list[Any], TrainJob], list[Any]]
    #: cai's defaults for config fields (above cai's CPU-friendly defaults, below the user's settings).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: `build(job) -> trainer`; it sets ``job.tokenizer``. None: the policy and ``trainer_class`` on ``job.rows``
    #: (`cai.training.common.policy_trainer`).
    build: Callable[[TrainJob], Any] | None = None
    #: `summary(trainer, job) -> dict`: what it adds to the summary after training.
    summary: Callable[[Any, TrainJob], dict[str, Any]] = _no_summary
    #: Keyword options that are not config fields, with their defaults (``reward_model``, ``limit``...).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: `check(job)`: refuse bad options before any data is read or model loaded.
    check: Callable[[TrainJob], None] | None = None
    #: The log key that holds its loss, and the trainer attribute that holds the trained model.
    loss_key: str = "loss"
    model_attr: str = "model"
    description: str = ""

    @property
    def command(self) -> str:
        return f"cai train {self.name}"

    def config_cls(self) -> type:
        return resolve_class(self.config_class)

    def trainer_cls(self) -> type:
        return resolve_class(self.trainer_class)


_REGISTRY: dict[str, TrainerSpec] = {}
_BUILTIN = ("sft", "reward", "dpo", "ppo", "rloo", "grpo")
_loaded = False


def register_trainer(spec: TrainerSpec, *, replace: bool = False) -> TrainerSpec:
    """Add a trainer to the registry (a user's package calls this, or names it as an entry point)."""
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"a trainer named {spec.name!r} is already registered; pass replace=True to swap it")
    _REGISTRY[spec.name] = spec
    return spec


def _plugins() -> list[TrainerSpec]:
    """The specs that installed packages name under the ``cai.trainers`` entry-point group."""
    found = []
    for ep in entry_points(group="cai.trainers"):
        try:
            found.append(ep.load())
        except Exception as e:  # a broken plugin must not take the CLI down with a traceback
            raise UserInputError(f"entry point cai.trainers:{ep.name} ({ep.value}) failed to load: {e}") from None
    return [s for s in found if isinstance(s, TrainerSpec)]


def trainer_registry(*, rescan: bool = False) -> dict[str, TrainerSpec]:
    """Every known trainer: the built-in ones, then those from entry points (read once; ``rescan`` reads again)."""
    global _loaded
    if not _loaded or rescan:
        _loaded = True
        for mod in _BUILTIN:
            import_module(f"cai.training.{mod}")
        for spec in _plugins():
            _REGISTRY.setdefault(spec.name, spec)
    return _REGISTRY


def get_trainer(name: "str | TrainerSpec") -> TrainerSpec:
    if isinstance(name, TrainerSpec):
        return name
    reg = trainer_registry()
    if name not in reg:
        raise UserInputError(f"trainer '{name}' unknown; use one of: {', '.join(reg)}")
    return reg[name]


def commands_for_kind(kind: str) -> str:
    """The `cai train` commands that take a dataset kind (for 'wrong kind' messages)."""
    names = [s.command for s in trainer_registry().values() if s.data_kind == kind]
    if kind == "responses":
        return "none yet: label it first with cai generate preferences"
    if not names:
        return "no cai train command"
    return " / ".join(names) + (" (as --prompts)" if kind == "prompts" else "")


def config_class(trainer: str) -> type:
    """The TRL config class behind one of the registered trainers (imports trl)."""
    return get_trainer(trainer).config_cls()


def check_config_fields(trainer: str, fields: dict[str, Any], source: str) -> None:
    """Refuse, before any model loads, what the trainer's TRL config would not take.

    Unknown keys (naming the close ones), values of the wrong type or out of range,
    and combinations the config class itself refuses, each as one line naming ``source``.
    """
    import tempfile

    from cai.training.config import TrainingConfigError, build_config

    spec = get_trainer(trainer)
    cls = spec.config_cls()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build_config(cls, tmp, defaults=dict(spec.defaults), config=fields, config_source=source)
        except TrainingConfigError as e:
            msg = str(e)
            raise TrainingConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None


__all__ = ["check_config_fields", "config_class", "TrainerSpec", "TrainJob", "register_trainer", "trainer_registry",
           "get_trainer", "resolve_class", "commands_for_kind"]
