"""`cai train ...`: SFT, reward model, PPO, RLOO, GRPO and DPO on TRL (library: cai.training)."""

from __future__ import annotations

from typing import Any, Callable

import click

from cai.cli.options import _stack, print_summary

F = Callable[..., Any]


# Flags that are TRL config fields keep TRL's names (minus dashes), so --help and the YAML agree.
common_options = _stack(
    click.option("--model", "-m", default="smollm2-135m", show_default=True,
                 help="Model to start from: 'smollm2-135m' (embedded), a local directory, or a hub id."),
    click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
                 help="Directory for the trained model (safetensors) and training_summary.json."),
    click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="YAML of the TRL config's fields; flags given here override it."),
    click.option("--lora", is_flag=True, help="Train a LoRA adapter (peft) and save it merged into the model."),
    click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps (PPO: N rollout batches)."),
    click.option("--learning-rate", type=float, default=None),
    click.option("--num-train-epochs", type=float, default=None),
    click.option("--batch-size", "per_device_train_batch_size", type=click.IntRange(1), default=None,
                 help="per_device_train_batch_size."),
    click.option("--seed", type=int, default=None),
)

max_length_option = click.option("--max-length", type=click.IntRange(8), default=None,
                                  help="Longest tokenized sequence (prompt + response).")


def _overrides(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _done(name: str, result) -> None:
    s = result.summary
    shown = {k: s.get(k) for k in ("trainer", "base_model", "steps", "seconds", "final_loss", "lora")}
    for extra in ("eval", "soft_labels", "episodes"):
        if extra in s:
            shown[extra] = s[extra]
    if s.get("rewards"):
        shown["reward_first_last"] = [s["rewards"][0], s["rewards"][-1]]
    print_summary(f"{name}: model saved (load it with --model {result.path})", str(result.path), shown)


@click.group("train")
@click.option("--launcher", type=click.Choice(["local", "accelerate"]), default="local", show_default=True,
              help="accelerate: rerun this command under `accelerate launch` (DDP, DeepSpeed, FSDP, multi-node).")
@click.option("--accelerate-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="accelerate config file, e.g. examples/accelerate/zero3.yaml (needed with --launcher accelerate).")
def group(launcher: str, accelerate_config: str | None) -> None:
    """Train with TRL: sft, reward, ppo, rloo, grpo, dpo.

    Each trainer reads `--config file.yaml` whose keys are the TRL config's
    fields (SFTConfig, RewardConfig, ...); flags override the file.

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


@group.command("sft")
@click.option("--data", "-d", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="An SFT dataset directory (cai generate revisions / cai generate cot).")
@common_options
@max_length_option
def sft(data_dir, model, out, config_file, lora, **flags) -> None:
    """Supervised fine-tuning on SFT rows; the loss covers the assistant's answer only."""
    from cai.training import train_sft

    _done("sft", train_sft(data_dir, model, out, config_file=config_file, lora=lora, **_overrides(flags)))


@group.command("reward")
@click.option("--data", "-d", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A preference dataset directory (cai generate preferences).")
@click.option("--soft-labels/--hard-labels", default=None,
              help="Train on p_chosen (default when every row has it) or on hard pairs.")
@click.option("--eval-fraction", type=click.FloatRange(0, 0.9), default=0.1, show_default=True,
              help="Pairs held out to report pairwise accuracy.")
@common_options
@max_length_option
def reward(data_dir, soft_labels, eval_fraction, model, out, config_file, lora, **flags) -> None:
    """Train a reward model (a one-output head on --model) on AI preference labels."""
    from cai.training import train_reward

    _done("reward", train_reward(data_dir, model, out, config_file=config_file, lora=lora, soft_labels=soft_labels,
                                 eval_fraction=eval_fraction, **_overrides(flags)))


@group.command("dpo")
@click.option("--data", "-d", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A preference dataset directory (cai generate preferences).")
@click.option("--beta", type=float, default=None, help="DPO temperature (strength of the pull to the reference).")
@common_options
@max_length_option
def dpo(data_dir, model, out, config_file, lora, **flags) -> None:
    """Direct preference optimisation on preference rows."""
    from cai.training import train_dpo

    _done("dpo", train_dpo(data_dir, model, out, config_file=config_file, lora=lora, **_overrides(flags)))


prompts_option = click.option(
    "--prompts", "-p", "prompts_path", required=True, type=click.Path(exists=True),
    help="Prompt set: .jsonl (prompt or messages), .csv, .txt, or a prompts dataset directory.")
limit_option = click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N prompts.")


@group.command("ppo")
@prompts_option
@click.option("--reward-model", "-r", required=True, help="Reward model directory (from cai train reward).")
@click.option("--kl-coef", type=float, default=None, help="KL penalty to the reference policy.")
@click.option("--response-length", type=click.IntRange(1), default=None, help="Tokens generated per rollout.")
@limit_option
@common_options
def ppo(prompts_path, reward_model, model, out, config_file, lora, limit, **flags) -> None:
    """PPO of --model (the SFT policy) against a reward model, with a KL penalty to its frozen copy."""
    from cai.training import train_ppo

    _done("ppo", train_ppo(prompts_path, model, reward_model, out, config_file=config_file, lora=lora,
                           limit=limit, **_overrides(flags)))


def group_rl_options(f: F) -> F:
    return _stack(
        prompts_option,
        click.option("--reward-model", "-r", default=None, help="Reward model directory (from cai train reward)."),
        click.option("--judge-constitution", default=None,
                     help="Also reward with the constitution judge (a shipped name or a YAML path)."),
        click.option("--judge-model", default="smollm2-135m", show_default=True,
                     help="Feedback model for --judge-constitution."),
        click.option("--beta", type=float, default=None, help="KL coefficient to the reference policy."),
        click.option("--num-generations", type=click.IntRange(2), default=None, help="Completions per prompt."),
        click.option("--max-completion-length", type=click.IntRange(1), default=None),
        limit_option,
        common_options,
    )(f)


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


@group.command("rloo")
@group_rl_options
def rloo(prompts_path, reward_model, judge_constitution, judge_model, model, out, config_file, lora, limit,
         **flags) -> None:
    """RLOO of --model, rewarded by a reward model and/or the constitution judge."""
    from cai.training import train_rloo

    _done("rloo", train_rloo(prompts_path, model, out, reward_model=reward_model,
                             judge=_judge(judge_constitution, judge_model), config_file=config_file, lora=lora,
                             limit=limit, **_overrides(flags)))


@group.command("grpo")
@group_rl_options
def grpo(prompts_path, reward_model, judge_constitution, judge_model, model, out, config_file, lora, limit,
         **flags) -> None:
    """GRPO of --model, rewarded by a reward model and/or the constitution judge."""
    from cai.training import train_grpo

    _done("grpo", train_grpo(prompts_path, model, out, reward_model=reward_model,
                             judge=_judge(judge_constitution, judge_model), config_file=config_file, lora=lora,
                             limit=limit, **_overrides(flags)))
