"""Backends: where generation and option scoring run. Stages only see the protocol."""

from cai.backends.base import Backend, ChoiceScores, Conversation, Generation, SamplingParams

__all__ = ["Backend", "ChoiceScores", "Conversation", "Generation", "SamplingParams", "make_backend"]


def make_backend(model: str, *, kind: str = "transformers", **kwargs) -> Backend:
    """Build a backend by kind for a model spec. Later kinds (vllm, openai) plug in here."""
    if kind == "transformers":
        from cai.backends.transformers import TransformersBackend

        return TransformersBackend(model, **kwargs)
    from cai.errors import UserInputError

    raise UserInputError(f"backend '{kind}' unknown; use one of: transformers")
