"""PPO against our reward model, with TRL's PPOTrainer (``trl.experimental.ppo``, trl 1.10-1.12).

The policy is the SFT model; the reference is a frozen copy of it (with LoRA, the
adapter-disabled policy); the reward model is ours, and the value model starts as
a second copy of it. PPO reads token ids, not chat rows, so prompts are
tokenized here through the policy's chat template with the generation prompt
(by `ChatEncoder`: special-token text in a prompt stays text).
"""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path
from typing import Any

from cai.errors import UserInputError
from cai.training.common import TrainResult, load_policy, load_reward_model, lora_config
from cai.training.runner import train
from cai.training.spec import TrainerSpec, TrainJob, register_trainer

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
    """Each prompt's ids through the policy's chat template with the generation prompt.

    Through `ChatEncoder`, so a prompt that spells the template's special tokens stays
    text: PPO's rollouts must not start from a forged system turn.
    """
    from cai.backends.chat import ChatEncoder

    chat = ChatEncoder(tokenizer)
    return [{"input_ids": chat.encode(r.messages)} for r in records]


def _same_vocab(a: Any, b: Any) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def _build(job: TrainJob) -> Any:
    """Policy, frozen reference, our reward model, and a value model starting as a copy of it."""
    import copy

    from datasets import Dataset

    cfg, reward_model = job.config, job.options["reward_model"]
    if job.settings.get("max_steps", -1) > 0 and "total_episodes" not in job.settings:
        # PPOTrainer counts episodes (prompts rolled out), not optimizer steps.
        cfg.total_episodes = cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    model, job.tokenizer = load_policy(job.model)
    rm, rtok = load_reward_model(reward_model)
    if not _same_vocab(job.tokenizer, rtok):
        raise UserInputError(
            f"reward model '{reward_model}' uses another tokenizer than policy '{job.model}'; "
            "PPO scores token ids directly, so train the reward model from the same base (cai train reward)"
        )
    value, _ = load_reward_model(reward_model)
    ref = None
    if not job.lora:
        ref, _ = load_policy(job.model)
        ref.eval()
    rm.eval()
    tok = copy.deepcopy(job.tokenizer)  # the saved tokenizer keeps its own padding side
    tok.padding_side = "left"  # generation continues prompts from the right edge
    job.info["reward_model"] = reward_model
    return job.spec.trainer_cls()(
        args=cfg, processing_class=tok, model=model, ref_model=ref, reward_model=rm, value_model=value,
        train_dataset=Dataset.from_list(tokenize_prompts(job.rows, tok)),
        peft_config=lora_config("CAUSAL_LM", settings=job.lora) if job.lora else None,
    )


def _summary(trainer: Any, job: TrainJob) -> dict[str, Any]:
    history = trainer.state.log_history
    return {"episodes": int(trainer.state.episode),
            "rewards": [e["objective/scores"] for e in history if "objective/scores" in e],
            "kl": [e["objective/kl"] for e in history if "objective/kl" in e]}


def _experimental(name: str) -> Any:
    """A class from ``trl.experimental.ppo``, without TRL's warning that the module is experimental (we pin trl)."""
    def resolve() -> type:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        return getattr(import_module("trl.experimental.ppo"), name)

    return resolve


PPO = register_trainer(TrainerSpec(
    name="ppo", config_class=_experimental("PPOConfig"), trainer_class=_experimental("PPOTrainer"),
    data_kind="prompts", defaults=PPO_DEFAULTS, rows=lambda records, job: list(records), build=_build,
    summary=_summary, options={"reward_model": None, "limit": None}, loss_key="loss/policy_avg",
    model_attr="policy_model",
    description="PPO of --model (the SFT policy) against a reward model, with a KL penalty to its frozen copy.",
))


def train_ppo(prompts: Any, policy: str, reward_model: str, out_dir: str | Path, *,
              config: dict[str, Any] | None = None, config_file: str | Path | None = None, lora: bool = False,
              limit: int | None = None, **overrides: Any) -> TrainResult:
    """PPO-train ``policy`` on a prompt set (path or list of PromptRecord) against ``reward_model``.

    ``overrides`` are PPOConfig fields (``kl_coef``, ``response_length``,
    ``total_episodes``, ...); ``max_steps=N`` means N rollout batches.
    """
    return train(PPO, prompts, policy, out_dir, reward_model=reward_model, config=config, config_file=config_file,
                 lora=lora, limit=limit, **overrides)
