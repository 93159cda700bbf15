"""PPO against our reward model, with TRL's PPOTrainer (``trl.experimental.ppo``, trl 1.10-1.12).

The policy is the SFT model; the reference is a frozen copy of it (with LoRA, the
adapter-disabled policy); the reward model is ours, and the value model starts as
a second copy of it. PPO reads token ids, not chat rows, so prompts are
tokenized here through the policy's chat template with the generation prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.errors import UserInputError
from cai.training.common import (
    TrainResult,
    base_summary,
    build_config,
    load_policy,
    load_prompt_records,
    load_reward_model,
    lora_config,
    run_training,
    save_trained,
)

PPO_DEFAULTS: dict[str, Any] = {
    "learning_rate": 3e-6,
    "response_length": 48,
    "kl_coef": 0.05,
    "stop_token": "eos",
    "num_mini_batches": 1,
    "local_rollout_forward_batch_size": 2,
    "num_sample_generations": 0,  # TRL's periodic sample printing needs an eval set; off by default
}


def tokenize_prompts(records: list[Any], tokenizer: Any) -> list[dict[str, list[int]]]:
    texts = [tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in records]
    return [{"input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]


def _same_vocab(a: Any, b: Any) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def build_ppo_trainer(
    prompts: Any,
    policy: str,
    reward_model: str,
    out_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    limit: int | None = None,
    **overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    records, provenance = load_prompt_records(prompts, limit=limit)
    max_steps = overrides.get("max_steps")
    cfg, settings = build_config(PPOConfig, out_dir, defaults=PPO_DEFAULTS, config=config,
                                 config_file=config_file, overrides=overrides)
    if max_steps and max_steps > 0 and "total_episodes" not in settings:
        # PPOTrainer counts episodes (prompts rolled out), not optimizer steps.
        cfg.total_episodes = max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    model, tok = load_policy(policy)
    rm, rtok = load_reward_model(reward_model)
    if not _same_vocab(tok, rtok):
        raise UserInputError(
            f"reward model '{reward_model}' uses another tokenizer than policy '{policy}'; "
            "PPO scores token ids directly, so train the reward model from the same base (cai train reward)"
        )
    value, _ = load_reward_model(reward_model)
    ref = None
    if not lora:
        ref, _ = load_policy(policy)
        ref.eval()
    rm.eval()
    padding_side = tok.padding_side
    tok.padding_side = "left"  # generation continues prompts from the right edge
    trainer = PPOTrainer(
        args=cfg, processing_class=tok, model=model, ref_model=ref, reward_model=rm, value_model=value,
        train_dataset=Dataset.from_list(tokenize_prompts(records, tok)),
        peft_config=lora_config("CAUSAL_LM") if lora else None,
    )
    ctx = {"cfg": cfg, "settings": settings, "tokenizer": tok, "padding_side": padding_side,
           "data": {**provenance, "reward_model": reward_model}}
    return trainer, ctx


def train_ppo(
    prompts: Any,
    policy: str,
    reward_model: str,
    out_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    lora: bool = False,
    limit: int | None = None,
    **overrides: Any,
) -> TrainResult:
    """PPO-train ``policy`` on a prompt set (path or list of PromptRecord) against ``reward_model``.

    ``overrides`` are PPOConfig fields (``kl_coef``, ``response_length``,
    ``total_episodes``, ...); ``max_steps=N`` means N rollout batches.
    """
    trainer, ctx = build_ppo_trainer(prompts, policy, reward_model, out_dir, config=config,
                                     config_file=config_file, lora=lora, limit=limit, **overrides)
    seconds = run_training(trainer)
    summary = base_summary("ppo", model=policy, settings=ctx["settings"], config=ctx["cfg"], lora=lora,
                           data=ctx["data"], seconds=seconds, trainer=trainer, loss_key="loss/policy_avg")
    history = trainer.state.log_history
    summary["episodes"] = int(trainer.state.episode)
    summary["rewards"] = [e["objective/scores"] for e in history if "objective/scores" in e]
    summary["kl"] = [e["objective/kl"] for e in history if "objective/kl" in e]
    tok = ctx["tokenizer"]
    tok.padding_side = ctx["padding_side"]
    return save_trained(trainer.policy_model, tok, out_dir, summary)
