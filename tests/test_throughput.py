"""Training speed in the summary: real tokens counted from the batches, FLOPs against the timed roof."""

from __future__ import annotations

import pytest
import torch
from helpers import one_torch_thread
from test_sft_forged_turns import ORDINARY, _sft_dir

from cai.training.throughput import count_tokens, throughput


def test_rates_are_computed_from_the_counts(monkeypatch):
    import cai.hardware as hw

    monkeypatch.setattr(hw, "bf16_verdict", lambda: {"bf16": True, "gflops": {"bfloat16": 300.0, "float32": 100.0}})
    counts = {"tokens": 800.0, "slots": 1000.0, "seconds": 4.0, "steps": 1.0}
    r = throughput(counts, "sft", 1_000_000, bf16=True)
    assert r["tokens_per_s"] == 200.0 and r["padding"] == 0.2
    assert r["gflops"] == pytest.approx(6 * 1e6 * 200 / 1e9, abs=0.05)
    assert r["roof_share"] == pytest.approx(r["gflops"] / 300.0, abs=1e-3) and r["roof_dtype"] == "bf16"
    assert throughput(counts, "dpo", 1_000_000, bf16=False)["gflops"] == pytest.approx(8 * 1e6 * 200 / 1e9, abs=0.05)
    assert "roof_share" not in throughput(counts, "sft", 10, bf16=True, device="cuda")
    assert throughput({"tokens": 0.0, "slots": 0.0, "seconds": 0.0, "steps": 0.0}, "sft", 10, bf16=True) is None


def test_the_counter_sees_real_tokens_not_padding():
    class Fake:
        def training_step(self, model, inputs):
            return 0

    t = Fake()
    counts = count_tokens(t)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    t.training_step(None, {"input_ids": torch.zeros(2, 4), "attention_mask": mask})
    assert counts["tokens"] == 5 and counts["slots"] == 8 and counts["steps"] == 1


def test_a_training_run_records_its_speed(tmp_path, tiny_model_dir):
    from cai.training import train_sft

    with one_torch_thread():
        res = train_sft(_sft_dir(tmp_path, ORDINARY), str(tiny_model_dir), tmp_path / "out",
                        config={"max_steps": 2, "learning_rate": 1e-3, "max_length": 128})
    rate = res.summary["throughput"]
    assert rate["tokens"] > 0 and rate["tokens_per_s"] > 0 and 0 <= rate["padding"] < 1
