"""dtype=auto on the CPU: bf16 where the CPU's bf16 units are measurably faster, fp32 elsewhere, and it says which."""

from __future__ import annotations

import pytest

import cai.hardware as hw


def test_cpu_bf16_features_reads_the_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert hw.cpu_bf16_features(info) == {"avx512_bf16", "amx_bf16"}
    info.write_text("flags\t\t: fpu avx2 fma avx512_bf16x\n")  # a longer flag is not the flag
    assert hw.cpu_bf16_features(info) == set()
    assert hw.cpu_bf16_features(tmp_path / "missing") == set()


@pytest.fixture
def fresh_verdict(monkeypatch, tmp_path):
    """No verdict from this process or an earlier one: a private cache directory."""
    monkeypatch.setattr(hw, "_VERDICT", None)
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(hw.CPU_DTYPE_ENV, raising=False)
    monkeypatch.delenv("CAI_TRAIN_BF16", raising=False)
    return tmp_path / "cache" / "cpu-bf16.json"


def test_auto_cpu_dtype_follows_the_timed_products_and_the_override(monkeypatch, fresh_verdict):
    timed = []
    monkeypatch.setattr(hw, "cpu_bf16_features", lambda: {"amx_bf16"})
    monkeypatch.setattr(hw, "time_gemms", lambda: timed.append(1) or {"float32": 100.0, "bfloat16": 250.0})
    dtype, why = hw.auto_cpu_dtype()
    assert dtype == "bfloat16" and "amx_bf16" in why and "2.50x" in why
    assert hw.cpu_bf16_pays_off()  # training reads the same verdict

    # bf16 units that are slower than fp32 (a 2-core Xeon with avx512_bf16): fp32
    monkeypatch.setattr(hw, "_VERDICT", None)
    fresh_verdict.unlink()
    monkeypatch.setattr(hw, "time_gemms", lambda: timed.append(1) or {"float32": 128.0, "bfloat16": 74.0})
    dtype, why = hw.auto_cpu_dtype()
    assert dtype == "float32" and "0.58x" in why and "so fp32" in why
    assert not hw.cpu_bf16_pays_off()

    # parity is not enough: bf16 costs precision
    monkeypatch.setattr(hw, "_VERDICT", None)
    fresh_verdict.unlink()
    monkeypatch.setattr(hw, "time_gemms", lambda: {"float32": 100.0, "bfloat16": 110.0})
    assert hw.auto_cpu_dtype()[0] == "float32"

    monkeypatch.setattr(hw, "cpu_bf16_features", lambda: set())
    monkeypatch.setattr(hw, "_VERDICT", None)
    monkeypatch.setattr(hw, "time_gemms", lambda: pytest.fail("no bf16 units: nothing to time"))
    assert hw.auto_cpu_dtype()[0] == "float32"
    monkeypatch.setenv(hw.CPU_DTYPE_ENV, "bfloat16")
    assert hw.auto_cpu_dtype() == ("bfloat16", "auto: CAI_CPU_DTYPE=bfloat16")
    monkeypatch.setenv(hw.CPU_DTYPE_ENV, "fp16")
    from cai.errors import UserInputError

    with pytest.raises(UserInputError, match="CAI_CPU_DTYPE"):
        hw.auto_cpu_dtype()


def test_the_verdict_is_kept_per_machine_so_every_run_picks_the_same_dtype(monkeypatch, fresh_verdict):
    monkeypatch.setattr(hw, "cpu_bf16_features", lambda: {"avx512_bf16"})
    monkeypatch.setattr(hw, "time_gemms", lambda: {"float32": 100.0, "bfloat16": 300.0})
    assert hw.auto_cpu_dtype()[0] == "bfloat16"
    assert fresh_verdict.is_file()
    # a later process (no verdict in memory) reads it instead of timing again
    monkeypatch.setattr(hw, "_VERDICT", None)
    monkeypatch.setattr(hw, "time_gemms", lambda: pytest.fail("timed again"))
    assert hw.auto_cpu_dtype()[0] == "bfloat16"
    # a damaged file is timed again and rewritten, not an error
    monkeypatch.setattr(hw, "_VERDICT", None)
    fresh_verdict.write_text("{not json")
    monkeypatch.setattr(hw, "time_gemms", lambda: {"float32": 100.0, "bfloat16": 300.0})
    assert hw.auto_cpu_dtype()[0] == "bfloat16"
    assert '"machine"' in fresh_verdict.read_text()
    # another machine (here: another torch thread count) is timed afresh
    monkeypatch.setattr(hw, "_VERDICT", None)
    key = hw._machine_key()
    monkeypatch.setattr(hw, "_machine_key", lambda: {**key, "threads": key["threads"] + 7})
    monkeypatch.setattr(hw, "time_gemms", lambda: {"float32": 100.0, "bfloat16": 50.0})
    assert hw.auto_cpu_dtype()[0] == "float32"


def test_time_gemms_measures_both_dtypes():
    # big enough that a slow moment on a loaded CI machine cannot round the figure to 0.0 GFLOP/s
    figures = hw.time_gemms(shapes=((64, 128, 128),), reps=2)
    assert set(figures) == {"float32", "bfloat16"} and all(v > 0 for v in figures.values())


def test_training_reads_the_same_verdict_with_its_own_override(monkeypatch, fresh_verdict):
    from cai.training import config

    assert config.cpu_bf16_pays_off is hw.cpu_bf16_pays_off
    monkeypatch.setattr(hw, "cpu_bf16_features", lambda: {"avx512_bf16"})
    monkeypatch.setattr(hw, "time_gemms", lambda: {"float32": 128.0, "bfloat16": 74.0})
    assert not hw.cpu_bf16_pays_off()
    assert config.cpu_friendly_defaults()["bf16"] is False
    monkeypatch.setenv("CAI_TRAIN_BF16", "1")
    assert hw.cpu_bf16_pays_off()
    monkeypatch.setenv("CAI_TRAIN_BF16", "0")
    monkeypatch.setattr(hw, "time_gemms", lambda: {"float32": 100.0, "bfloat16": 300.0})
    assert not hw.cpu_bf16_pays_off()


def test_choose_dtype(monkeypatch):
    from cai.backends.transformers import choose_dtype

    monkeypatch.setenv(hw.CPU_DTYPE_ENV, "float32")
    assert choose_dtype("cpu", "auto") == ("float32", "auto: CAI_CPU_DTYPE=float32")
    assert choose_dtype("cpu", None)[0] == "float32"
    assert choose_dtype("cpu", "bfloat16") == ("bfloat16", "given")
    assert choose_dtype("cuda", "auto")[0] is None  # left to cai.models.pick_dtype


def test_bf16_backend_scores_with_fp32_logits_and_stays_close_to_fp32(tiny_model_dir, tiny_backend_fp32, monkeypatch):
    import math

    import torch

    from cai.backends.base import SamplingParams
    from cai.backends.precision import PreciseHeadBase
    from cai.backends.transformers import TransformersBackend

    monkeypatch.setenv(hw.CPU_DTYPE_ENV, "bfloat16")  # what auto picks where bf16 units pay off
    bf16 = TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", progress=False)
    info = bf16.describe()
    assert info["dtype"] == "bfloat16" and info["scoring_logits"] == "float32"
    assert info["dtype_choice"] == "auto: CAI_CPU_DTYPE=bfloat16"
    assert tiny_backend_fp32.describe()["dtype"] == "float32"
    assert tiny_backend_fp32.describe()["scoring_logits"] == "float32"
    assert next(bf16.model.model.parameters()).dtype == torch.bfloat16
    head = bf16.model.get_output_embeddings()
    assert isinstance(head, PreciseHeadBase) and not head.precise
    assert bf16.parameter_count == tiny_backend_fp32.parameter_count

    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": "The better response is ("}]
             for q in ("Which is kinder?", "word " * 40)]
    for options in (["A", "B"], ["A) yes", "B) no"]):  # the fast path and the general one
        ours = bf16.choice_logprobs(convs, options)
        ref = tiny_backend_fp32.choice_logprobs(convs, options)
        for a, b in zip(ours, ref):
            assert abs(math.exp(a.logprobs[0]) - math.exp(b.logprobs[0])) <= 0.02
    assert not head.precise  # back to bf16 logits for generation
    gens = bf16.generate([c[:1] for c in convs], SamplingParams(max_new_tokens=6, temperature=0))
    assert all(g.completion_tokens == 6 for g in gens)


def test_the_override_keeps_fp32(tiny_model_dir, monkeypatch):
    from cai.backends.transformers import TransformersBackend

    monkeypatch.setenv(hw.CPU_DTYPE_ENV, "float32")
    b = TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", progress=False)
    assert b.describe()["dtype"] == "float32" and b.describe()["dtype_choice"] == "auto: CAI_CPU_DTYPE=float32"


def test_a_dataset_begun_in_one_dtype_is_not_finished_in_another(tmp_path, tiny_model_dir):
    """dtype=auto differs between machines: the precision is part of a stage's fingerprint."""
    from click.testing import CliRunner

    from cai.cli.main import cli

    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello there\nName a colour\n")
    base = ["generate", "responses", "-p", str(prompts), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
            "--max-new-tokens", "2"]
    first = CliRunner().invoke(cli, [*base, "--dtype", "float32", "--limit", "1"])
    assert first.exit_code == 0, first.output
    other = CliRunner().invoke(cli, [*base, "--dtype", "bfloat16"])
    assert other.exit_code == 2 and "dtype" in other.output, other.output
    same = CliRunner().invoke(cli, [*base, "--dtype", "float32"])  # the same precision resumes
    assert same.exit_code == 0, same.output
