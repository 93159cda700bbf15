"""Logs a person can read: bars on a terminal, one plain line per step in a log file, no warnings of our own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from cai.data import DatasetWriter
from cai.progress import LineProgress, progress_bar
from cai.training.logs import TRAIN_LOG_FILE, step_line

ROOT = Path(__file__).resolve().parents[1]


def _log_env() -> dict[str, str]:
    """A child process as `make demo > log` runs it: progress on, stderr a pipe (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAI_NO_PROGRESS", "HF_HUB_DISABLE_PROGRESS_BARS",
                                                               "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


def _readable(text: str) -> None:
    assert "\r" not in text and "\x1b" not in text, "tqdm redraws in a log file"
    assert "Warning" not in text and "deprecated" not in text, text[-3000:]


def test_lines_off_a_terminal_outermost_loop_only(monkeypatch, capsys):
    monkeypatch.delenv("CAI_NO_PROGRESS", raising=False)
    with progress_bar(total=4, desc="outer", unit="prompt", initial=1) as outer:
        assert isinstance(outer, LineProgress)  # pytest's stderr is no terminal
        with progress_bar(total=3, desc="inner", unit="seq") as inner:
            inner.update(3)
        outer.update(3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("outer: 4/4 prompts in ") and "1 done before" in err
    assert "inner" not in err
    _readable(err)


def test_no_progress_means_no_lines(capsys):
    with progress_bar(total=2, desc="quiet") as bar:  # conftest sets CAI_NO_PROGRESS=1
        bar.update(2)
    assert capsys.readouterr().err == ""


def test_step_line_is_short_and_names_the_figures():
    ppo = {"eps": 6, "objective/kl": 0.01, "objective/entropy": 86.8, "objective/non_score_reward": 0.0,
           "objective/rlhf_reward": -0.08, "objective/scores": -0.085, "policy/approxkl_avg": 0.0,
           "policy/clipfrac_avg": 0.0, "loss/policy_avg": -7e-08, "loss/value_avg": 0.0128, "val/clipfrac_avg": 0.0,
           "policy/entropy_avg": 10.79, "val/ratio": 1.0, "val/ratio_var": 0.0, "val/num_eos_tokens": 0,
           "lr": 3e-06, "episode": 6, "epoch": 0.5}
    line = step_line("ppo", 3, 10, ppo)
    assert line.startswith("ppo step 3/10: score -0.085, kl 0.01") and len(line) < 120
    assert step_line("sft", 2, 2, {"train_runtime": 0.59, "train_loss": 10.79}) == \
        "sft: trained 2 steps in 0.6s, train_loss 10.79"
    assert step_line("reward", 2, 2, {"eval_loss": 0.69, "eval_accuracy": 1.0, "epoch": 1.0}).startswith(
        "reward eval at step 2/2: eval_loss 0.69")


def test_decode_loop_passes_the_cache_without_deprecation(tiny_backend):
    from cai.backends.base import SamplingParams

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_backend.generate([[{"role": "user", "content": "Hi there"}], [{"role": "user", "content": "Why?"}]],
                              SamplingParams(max_new_tokens=3, temperature=0.0))
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]
    assert tiny_backend._cache_kw in ("cache", "past_key_values")


def test_generate_log_is_plain_lines(tmp_path, tiny_model_dir):
    out = tmp_path / "responses"
    r = subprocess.run([sys.executable, "-m", "cai.cli.main", "generate", "responses",
                        "-p", str(ROOT / "examples/prompts/red_team.jsonl"), "-m", str(tiny_model_dir), "--device", "cpu",
                        "--max-new-tokens", "4", "--limit", "4", "--out", str(out)],
                       env=_log_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _readable(r.stderr)
    assert "responses: 4/4 prompts in" in r.stderr and "Loading weights" not in r.stderr


def test_training_log_one_line_per_step_full_log_in_the_stage_dir(tmp_path, tiny_model_dir):
    rows = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"How do I do thing {i}?"},
                                         {"role": "assistant", "content": f"Carefully, step {i}."}]}
            for i in range(4)]
    w = DatasetWriter(tmp_path / "sft-data", kind="sft", fingerprint={"test": 1})
    w.write(rows)
    w.finalize({})
    out = tmp_path / "model"
    r = subprocess.run([sys.executable, "-m", "cai.cli.main", "train", "sft", "--data", str(tmp_path / "sft-data"),
                        "-m", str(tiny_model_dir), "--out", str(out), "--max-steps", "2", "--max-length", "64"],
                       env=_log_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _readable(r.stderr)
    lines = r.stderr.splitlines()
    steps = [ln for ln in lines if ln.startswith("sft step ")]
    assert len(steps) == 2 and steps[0].startswith("sft step 1/2: loss ") and all(len(s) < 120 for s in steps)
    assert "{'loss'" not in r.stderr and any(ln.startswith("sft: trained 2 steps") for ln in lines)
    logged = [json.loads(x) for x in (out / TRAIN_LOG_FILE).read_text().splitlines()]
    per_step = [e for e in logged if "loss" in e]
    assert [e["step"] for e in per_step] == [1, 2] and all("grad_norm" in e and "epoch" in e for e in per_step)
    assert "train_runtime" in logged[-1]


def test_trl_bars_off_when_not_on_a_terminal(monkeypatch):
    from cai.training.config import cpu_friendly_defaults

    monkeypatch.delenv("CAI_NO_PROGRESS", raising=False)
    assert cpu_friendly_defaults()["disable_tqdm"] is True


def test_eval_says_whose_answers_each_generate_line_counts(tmp_path, tiny_model_dir):
    r = subprocess.run([sys.executable, "-m", "cai.cli.main", "eval", "harmlessness", "-m", str(tiny_model_dir),
                        "--red-team", str(ROOT / "examples/prompts/red_team.jsonl"), "--limit", "2",
                        "--max-new-tokens", "2", "--device", "cpu"],
                       env=_log_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _readable(r.stderr)
    lines = r.stderr.splitlines()
    named = [i for i, line in enumerate(lines) if line.startswith("eval: answers of ")]
    assert named and any(lines[j].startswith("generate: ") for j in range(named[0] + 1, len(lines))), r.stderr


def test_embedded_model_conversion_draws_no_bar_into_a_log(tmp_path):
    """The one-time GGUF conversion: transformers' own bar is off when stderr is a file."""
    code = "from cai.models import embedded_model_dir; print(embedded_model_dir())"
    r = subprocess.run([sys.executable, "-c", code], env={**_log_env(), "CAI_CACHE_DIR": str(tmp_path)},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (Path(r.stdout.strip()) / "model.safetensors").is_file()
    assert "\r" not in r.stderr and "Converting and de-quantizing" not in r.stderr, r.stderr[-2000:]
