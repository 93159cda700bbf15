"""Backends: where generation and option scoring run. Stages only see the protocol."""

from cai.backends.base import Backend, ChoiceScores, Conversation, Generation, SamplingParams
from cai.backends.registry import make_backend

__all__ = ["Backend", "ChoiceScores", "Conversation", "Generation", "SamplingParams", "make_backend"]
