"""cai: Constitutional AI and RL from AI feedback on top of transformers and TRL.

Everything the CLI does is a library call first. Heavy modules load lazily, so
``import cai`` is quick.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first access.
_LAZY = {
    "Constitution": "cai.constitution",
    "Principle": "cai.constitution",
    "load_constitution": "cai.constitution",
    "PromptTemplates": "cai.templates",
    "load_model": "cai.models",
    "SamplingParams": "cai.backends.base",
    "Backend": "cai.backends.base",
    "make_backend": "cai.backends",
    "TransformersBackend": "cai.backends.transformers",
    "OpenAIBackend": "cai.backends.openai",
    "VLLMBackend": "cai.backends.vllm",
    "RayBackend": "cai.backends.ray_pool",
    "ChatServer": "cai.serve",
    "load_prompts": "cai.data",
    "DatasetWriter": "cai.data",
    "to_hf_dataset": "cai.data",
    "generate_responses": "cai.stages.responses",
    "ConstitutionJudge": "cai.judge",
    "Judgement": "cai.judge",
    "label_preferences": "cai.stages.label",
    "run_preferences": "cai.stages.label",
    "LabelConfig": "cai.stages.label",
    "revise": "cai.stages.revise",
    "run_revisions": "cai.stages.revise",
    "ReviseConfig": "cai.stages.revise",
    "run_synthetic_prompts": "cai.stages.synthetic",
    "dedup_texts": "cai.dedup",
    "generate_cot": "cai.stages.cot",
    "run_cot": "cai.stages.cot",
    "CotConfig": "cai.stages.cot",
    "load_questions": "cai.stages.cot",
    "AnswerExtractor": "cai.answers",
    "evaluate_models": "cai.evaluation",
    "EvalConfig": "cai.evaluation",
    "RefusalDetector": "cai.refusal",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cai' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
