"""Shared fixtures. Nothing here touches the network: tiny models are built in the test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `from fakes import ScriptedBackend`

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["CAI_NO_PROGRESS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded default as a safetensors dir (dequantized once into the user cache)."""
    from cai.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A tiny random Llama with the embedded default's tokenizer and chat template, saved to disk."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    from cai.backends.transformers import TransformersBackend

    return TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_backend_fp32(tiny_model_dir):
    """tiny_backend pinned to fp32, for tests whose point is an exact equality (auto is bf16 on a
    CPU with bf16 units, whose rounding depends on batch shape)."""
    from cai.backends.transformers import TransformersBackend

    return TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", dtype="float32", progress=False)


@pytest.fixture
def tiny_constitution_path() -> Path:
    return FIXTURES / "tiny_constitution.yaml"
