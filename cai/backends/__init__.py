"""Backends: where generation and option scoring run. Stages only see the protocol."""

from cai.backends.base import Backend, ChoiceScores, Conversation, Generation, SamplingParams

__all__ = ["Backend", "ChoiceScores", "Conversation", "Generation", "SamplingParams", "make_backend"]


def make_backend(model: str, *, kind: str = "transformers", **kwargs) -> Backend:
    """Build a backend by kind for a model spec. Later kinds (vllm, openai) plug in here."""
    if kind == "transformers":
        from cai.backends.transformers import TransformersBackend

        return TransformersBackend(model, **kwargs)
    if kind == "openai":  # model = the server's model name; URL from base_url= or $OPENAI_BASE_URL
        from cai.backends.openai import OpenAIBackend

        return OpenAIBackend(model, **kwargs)
    if kind == "vllm":
        from cai.backends.vllm import VLLMBackend

        return VLLMBackend(model, **kwargs)
    if kind == "ray" or kind.startswith("ray:"):  # "ray:vllm": replicas of another kind
        from cai.backends.ray_pool import RayBackend

        return RayBackend.from_options(model, inner_kind=kind.partition(":")[2] or "transformers", **kwargs)
    from cai.errors import UserInputError

    raise UserInputError(f"backend '{kind}' unknown; use one of: transformers, openai, vllm, ray, ray:<kind>")
