"""`cai train ...`: one command per registered trainer (library: cai.training), TRL-like on the command line.

Each command has cai's own options (``--data``, ``--model``, ``--out``,
``--config``, ``--lora`` and the trainer's own), then every field of the
trainer's TRL config as a flag, generated from the config dataclass with its
help text and default, spelled ``--learning_rate`` or ``--learning-rate``, as
TRL's parser spells them. The TRL flags are built the first time a command
parses or shows help, so `cai --help` does not import trl. ``--config`` takes a
YAML of those fields or a TRL recipe (``model_name_or_path``, ``dataset_name``,
``use_peft``, ``output_dir`` fill in cai's options); flags override it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from cai.cli.options import print_summary

#: TRL spellings of cai's own options (TRL recipe keys and script flags), per option.
MODEL_FLAGS = ("--model", "-m", "--model_name_or_path", "--model-name-or-path")
OUT_FLAGS = ("--out", "-o", "--output_dir", "--output-dir")
DATA_FLAGS = ("--dataset_name", "--dataset-name")
#: TRL config fields that are cai options under another name, per trainer (never generated as flags).
ALIASED_FIELDS = {"output_dir"}
PPO_ALIASES = {"reward_model_path": "reward_model", "sft_model_path": "model"}


def _effective_defaults(spec: Any) -> dict[str, Any]:
    from cai.training.config import cpu_friendly_defaults

    return {**cpu_friendly_defaults(), **dict(spec.defaults)}


class TrlValue(click.ParamType):
    """A TRL config field's value, converted and checked as in a YAML config (one clean error otherwise)."""

    def __init__(self, config_cls: type, field: str, type_name: str) -> None:
        self.config_cls, self.field, self.name = config_cls, field, type_name

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from cai.training.fields import TrainingConfigError, coerce_fields

        try:
            return coerce_fields(self.config_cls, {self.field: value}, "flag")[self.field]
        except TrainingConfigError as e:
            self.fail(str(e).split(f"field '{self.field}' ", 1)[-1], param, ctx)


def trl_options(spec: Any, taken: set[str]) -> list[click.Option]:
    """One option per init field of the spec's TRL config (imports trl): ``--name`` and ``--name-with-dashes``."""
    from cai.training.fields import describe, field_infos

    cls = spec.config_cls()
    defaults = _effective_defaults(spec)
    options: list[click.Option] = []
    for name, info in field_infos(cls).items():
        if name in taken or name in ALIASED_FIELDS or (spec.name == "ppo" and name in PPO_ALIASES):
            continue
        decls = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])
        if name == "per_device_train_batch_size":
            decls["--batch-size"] = None  # cai's short name for it
        default = defaults.get(name, info.default)
        shown = "" if default is dataclasses.MISSING else f" [default: {default}]"
        words = describe(info.type)
        is_bool = words == "true or false"
        kind = {"true or false": "BOOL", "a whole number": "INT", "a number": "FLOAT", "text": "TEXT"}.get(
            words, "CHOICE" if words.startswith("one of") else "VALUE")
        opt = click.Option([*decls, name], type=TrlValue(cls, name, kind), default=None,
                           help=(info.help or describe(info.type)) + shown,
                           **({"is_flag": False, "flag_value": "true"} if is_bool else {}))
        options.append(opt)
        if is_bool and default is True:
            options.append(click.Option([f"--no_{name}", f"--no-{name.replace('_', '-')}", f"no__{name}"],
                                        is_flag=True, default=False, help=f"Set {name} to false."))
    return options


class TrainerCommand(click.Command):
    """A `cai train NAME` command: cai's options, then the trainer's TRL config fields as flags (built lazily)."""

    def __init__(self, *args: Any, trainer: str, **kwargs: Any) -> None:
        from cai.training.spec import get_trainer

        super().__init__(*args, **kwargs)
        self.trainer = trainer
        self._spec = get_trainer(trainer)
        self._trl: list[click.Option] | None = None
        data = (click.Option(["--prompts", "-p", *DATA_FLAGS, "data"], type=click.Path(exists=True), default=None,
                             help="Prompt set: .jsonl (prompt or messages), .csv, .txt, or a prompts dataset directory.")
                if self._spec.data_kind == "prompts" else
                click.Option(["--data", "-d", *DATA_FLAGS, "data"], type=click.Path(exists=True, file_okay=False),
                             default=None, help=f"A '{self._spec.data_kind}' dataset directory."))
        self.params[:0] = [
            data,
            click.Option([*MODEL_FLAGS, *(["--sft_model_path"] if trainer == "ppo" else []), "model"],
                         default="smollm2-135m", show_default=True,
                         help="Model to start from: 'smollm2-135m' (embedded), a local directory, or a hub id."),
            click.Option([*OUT_FLAGS, "out"], type=click.Path(file_okay=False), default=None,
                         help="Directory for the trained model (safetensors) and training_summary.json."),
            click.Option(["--config", "config_file"], type=click.Path(exists=True, dir_okay=False), default=None,
                         help="YAML of the TRL config's fields, or a TRL recipe; flags given here override it."),
            click.Option(["--lora", "--use_peft", "--use-peft", "lora"], is_flag=True,
                         help="Train a LoRA adapter (peft) and save it merged into the model."),
            click.Option(["--average-tail", "average_tail"], type=click.FloatRange(0.0, 1.0, max_open=True),
                         default=0.0, show_default=True,
                         help="Save the mean weights over this fraction of the final steps (0: the last step's)."),
            click.Option(["--resume", "resume"], is_flag=True,
                         help="Continue an interrupted run in --out from its newest checkpoint (cai saves one "
                              "every 2 minutes of training); without one, train from the start."),
        ]

    def trl_params(self) -> list[click.Option]:
        if self._trl is None:
            self._trl = trl_options(self._spec, {p.name for p in self.params if p.name})
        return self._trl

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        help_option = self.get_help_option(ctx)
        return [*self.params, *self.trl_params(), *([help_option] if help_option is not None else [])]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own = [r for p in [*self.params, self.get_help_option(ctx)] if p is not None and (r := p.get_help_record(ctx))]
        with formatter.section("Options"):
            formatter.write_dl(own)
        with formatter.section(f"TRL {self._spec.config_cls().__name__} fields (also --config YAML keys)"):
            formatter.write_dl([r for p in self.trl_params() if (r := p.get_help_record(ctx))])

    def invoke(self, ctx: click.Context) -> Any:
        """Gather the TRL flags given into ``trl``; fill cai's options from a TRL recipe where not given."""
        params = ctx.params
        trl = {}
        for p in self.trl_params():
            value = params.pop(p.name)
            if p.name.startswith("no__"):
                if value:
                    trl[p.name[4:]] = False
            elif value is not None:
                trl[p.name] = value
        if params.get("config_file"):
            from cai.training.config import recipe_args

            recipe = recipe_args(params["config_file"])
            for key in ("data", "out"):
                params[key] = params[key] or recipe.get(key)
            if ctx.get_parameter_source("model") is click.core.ParameterSource.DEFAULT and recipe.get("model"):
                params["model"] = recipe["model"]
            if params["lora"] or recipe.get("lora"):
                params["lora"] = recipe.get("lora_settings") or True
            if "reward_model" in params:
                params["reward_model"] = params["reward_model"] or recipe.get("reward_model")
        for key, flag in (("data", "--prompts" if self._spec.data_kind == "prompts" else "--data"), ("out", "--out")):
            if not params.get(key):
                raise click.UsageError(f"Missing option '{flag}' (or its TRL recipe key in --config).", ctx)
        tail = params.pop("average_tail")
        if tail:  # a cai option of every trainer, passed with the TRL fields to train()
            trl["average_tail"] = tail
        if params.pop("resume"):
            trl["resume"] = True
        params["trl"] = trl
        return super().invoke(ctx)


def _done(name: str, result: Any) -> None:
    s = result.summary
    shown = {k: s.get(k) for k in ("trainer", "base_model", "steps", "seconds", "final_loss", "lora")}
    for extra in ("eval", "soft_labels", "episodes"):
        if extra in s:
            shown[extra] = s[extra]
    if s.get("rewards"):
        shown["reward_first_last"] = [s["rewards"][0], s["rewards"][-1]]
    print_summary(f"{name}: model saved (load it with --model {result.path})", str(result.path), shown)


class TrainGroup(click.Group):
    """The built-in trainers' commands, and a generic one for each trainer a plugin registers."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from cai.training.spec import trainer_registry

        return [*super().list_commands(ctx), *(n for n in trainer_registry() if n not in self.commands)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        from cai.training.spec import trainer_registry

        spec = trainer_registry().get(name)
        if spec is None:
            return None

        def run(data, model, out, config_file, lora, trl) -> None:
            from cai.training import train

            _done(name, train(name, data, model, out, config_file=config_file, lora=lora, **trl))

        return TrainerCommand(name, trainer=name, callback=run, help=spec.description or f"Train with {name}.")


@click.group("train", cls=TrainGroup)
@click.option("--launcher", type=click.Choice(["local", "accelerate"]), default="local", show_default=True,
              help="accelerate: rerun this command under `accelerate launch` (DDP, DeepSpeed, FSDP, multi-node).")
@click.option("--accelerate-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="accelerate config file, e.g. examples/accelerate/zero3.yaml (needed with --launcher accelerate).")
def group(launcher: str, accelerate_config: str | None) -> None:
    """Train with TRL: sft, reward, ppo, rloo, grpo, dpo (and any trainer a plugin registers).

    Every field of the trainer's TRL config (SFTConfig, RewardConfig, ...) is a
    flag (--learning_rate or --learning-rate) and a key of `--config file.yaml`,
    which may also be a TRL recipe (model_name_or_path, dataset_name, ...);
    flags override the file.

    Scale out with: cai train --launcher accelerate --accelerate-config
    examples/accelerate/ddp.yaml sft --data ... (see examples/accelerate/).
    """
    import sys

    if launcher != "accelerate" or "--help" in sys.argv or "-h" in sys.argv:
        return

    from cai.errors import UserInputError
    from cai.training.launch import already_launched, launch_with_accelerate

    if already_launched():
        return  # inside the processes accelerate started: train here
    if not accelerate_config:
        raise UserInputError("--launcher accelerate needs --accelerate-config FILE; see examples/accelerate/")
    raise SystemExit(launch_with_accelerate(sys.argv[1:], accelerate_config))


@group.command("sft", cls=TrainerCommand, trainer="sft")
@click.option("--decision-tokens", type=click.IntRange(min=0), default=0, show_default=True,
              help="Weight the loss of each answer's first N tokens (where it opens an answer or a refusal); 0: off.")
@click.option("--decision-weight", type=click.FloatRange(min=1.0), default=1.0, show_default=True,
              help="How many times those first tokens count (the quickstart uses 2 tokens x 20).")
def sft(data, decision_tokens, decision_weight, model, out, config_file, lora, trl) -> None:
    """Supervised fine-tuning on SFT rows; the loss covers the assistant's answer only."""
    from cai.training import train_sft

    _done("sft", train_sft(data, model, out, config_file=config_file, lora=lora, decision_tokens=decision_tokens,
                           decision_weight=decision_weight, **trl))


@group.command("reward", cls=TrainerCommand, trainer="reward")
@click.option("--soft-labels/--hard-labels", default=None,
              help="Train on p_chosen (default when every row has it) or on hard pairs.")
@click.option("--eval-fraction", type=click.FloatRange(0, 0.9), default=0.1, show_default=True,
              help="Pairs held out to report pairwise accuracy.")
def reward(data, soft_labels, eval_fraction, model, out, config_file, lora, trl) -> None:
    """Train a reward model (a one-output head on --model) on AI preference labels."""
    from cai.training import train_reward

    _done("reward", train_reward(data, model, out, config_file=config_file, lora=lora, soft_labels=soft_labels,
                                 eval_fraction=eval_fraction, **trl))


@group.command("dpo", cls=TrainerCommand, trainer="dpo")
def dpo(data, model, out, config_file, lora, trl) -> None:
    """Direct preference optimisation on preference rows."""
    from cai.training import train_dpo

    _done("dpo", train_dpo(data, model, out, config_file=config_file, lora=lora, **trl))


limit_option = click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N prompts.")


@group.command("ppo", cls=TrainerCommand, trainer="ppo")
@click.option("--reward-model", "-r", "--reward_model_path", "--reward-model-path", "reward_model", default=None,
              help="Reward model directory (from cai train reward).")
@limit_option
def ppo(data, reward_model, model, out, config_file, lora, limit, trl) -> None:
    """PPO of --model (the SFT policy) against a reward model, with a KL penalty to its frozen copy."""
    from cai.training import train_ppo

    if not reward_model:
        raise click.UsageError("Missing option '--reward-model' (or reward_model_path in --config).")
    _done("ppo", train_ppo(data, model, reward_model, out, config_file=config_file, lora=lora, limit=limit, **trl))


def _judge(constitution: str | None, judge_model: str):
    """The constitution judge as a TRL reward function, built on first call (after the data checks)."""
    if constitution is None:
        return None
    built: list[Any] = []

    def constitution_judge(prompts, completions, **kwargs):
        if not built:
            from cai.backends import make_backend
            from cai.constitution import load_constitution
            from cai.judge import ConstitutionJudge

            built.append(ConstitutionJudge(load_constitution(constitution), make_backend(judge_model))
                         .as_reward_func())
        return built[0](prompts, completions, **kwargs)

    from cai.constitution import load_constitution

    load_constitution(constitution)  # a bad constitution fails now, not after the policy loads
    return constitution_judge


def group_rl_command(name: str, doc: str) -> click.Command:
    """The rloo / grpo command: a reward model and/or the constitution judge as reward functions."""

    def run(data, reward_model, judge_constitution, judge_model, model, out, config_file, lora, limit, trl) -> None:
        import cai.training as training

        fn = getattr(training, f"train_{name}")
        _done(name, fn(data, model, out, reward_model=reward_model, judge=_judge(judge_constitution, judge_model),
                       config_file=config_file, lora=lora, limit=limit, **trl))

    run.__doc__ = doc
    run = click.option("--reward-model", "-r", default=None, help="Reward model directory (from cai train reward).")(
        click.option("--judge-constitution", default=None,
                     help="Also reward with the constitution judge (a shipped name or a YAML path).")(
            click.option("--judge-model", default="smollm2-135m", show_default=True,
                         help="Feedback model for --judge-constitution.")(limit_option(run))))
    return group.command(name, cls=TrainerCommand, trainer=name)(run)


rloo = group_rl_command("rloo", "RLOO of --model, rewarded by a reward model and/or the constitution judge.")
grpo = group_rl_command("grpo", "GRPO of --model, rewarded by a reward model and/or the constitution judge.")
