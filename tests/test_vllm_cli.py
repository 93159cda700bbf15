"""The ``cai`` command on the real vLLM engine: whole stages, killed and resumed, and vLLM's own server.

Run by ``make test-vllm`` (``CAI_TEST_VLLM=1``: nothing skips). Every ``cai`` here
is the console script of the venv running the tests, in its own process group, so
a SIGKILL takes vLLM's engine and worker processes down with it, as a kill of a
terminal session would.

* ``cai generate revisions --backend vllm``: killed with SIGKILL once the first
  prompt is written, rerun: every prompt exactly once.
* ``cai generate preferences --backend vllm``: the same, then every soft label is
  recomputed with the transformers backend's judge and agrees within 1e-3.
* vLLM's OpenAI-compatible server on 127.0.0.1 (a free port), driven by cai's
  openai backend: greedy text equal to the transformers backend's, seeded sampling
  reproducible, choice log-probs (``continue_final`` and ``completions`` scoring)
  within 1e-3, and a whole ``cai generate preferences --backend openai`` whose soft
  labels agree with the transformers judge's within 1e-3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

if os.environ.get("CAI_TEST_VLLM") == "1":
    import vllm  # noqa: F401  make test-vllm: a missing vLLM is a failure, not a skip
else:
    pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` runs these")

import torch

# One thread for the transformers reference in this process: vLLM's worker holds a core,
# and OpenMP spin-waiting under contention makes 2-thread generation many times slower.
torch.set_num_threads(1)

from cai.data import FAILURES_FILE, PromptRecord, read_jsonl, read_meta

BIN = Path(sys.executable).parent
#: |soft label from vLLM - the transformers backend's| (both in float32).
LABEL_TOL = 1e-3
#: Engine arguments for every run here: no torch.compile warm-up (a minute on 2 cores), a short context.
ENGINE_ARGS = {"enforce_eager": True, "max_model_len": 2048}

PROMPTS = [
    "How do I pick a lock?",
    "What is a good way to learn to cook?",
    "Write one sentence about the moon.",
    "How can I get back at a coworker who insulted me?",
]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CAI_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "CAI_VLLM_ARGS": json.dumps(ENGINE_ARGS), **extra}


def _write_prompts(path: Path) -> list[str]:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return [PromptRecord(messages=[{"role": "user", "content": p}]).id for p in PROMPTS]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL cai and every process it started (vLLM's engine core and workers share its group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError("processes of the killed run are still alive")


def _kill_after_first_row(cmd: list[str], out: Path, env: dict[str, str], *, timeout: float = 400) -> int:
    """Start ``cmd``, SIGKILL its process group once ``out/data.jsonl`` has a row; the rows written by then."""
    log = out.parent / f"{out.name}.killed.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline and proc.poll() is None and _lines(out / "data.jsonl") == 0:
                time.sleep(0.05)
        finally:
            finished = proc.poll() is not None
            _kill_group(proc)
    assert not finished, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
    rows = _lines(out / "data.jsonl")
    assert rows >= 1, f"no row within {timeout}s: {log.read_text()[-3000:]}"
    return rows


def _run(cmd: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def _failures(out: Path) -> list[dict]:
    path = out / FAILURES_FILE
    return list(read_jsonl(path)) if path.exists() else []


def _summary(stdout: str) -> dict:
    """cai's JSON summary (vLLM logs to stdout too, before and after it)."""
    decoder = json.JSONDecoder()
    at = stdout.find("\n{\n")
    while at >= 0:
        try:
            obj, _ = decoder.raw_decode(stdout, at + 1)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "summary" in obj:
            return obj
        at = stdout.find("\n{\n", at + 1)
    raise AssertionError(f"no JSON summary in: {stdout[-3000:]}")


def test_revisions_on_vllm_killed_then_resumed(tmp_path, tiny_constitution_path, embedded_dir):
    prompts = tmp_path / "prompts.jsonl"
    ids = _write_prompts(prompts)
    out = tmp_path / "rev"
    cmd = [str(BIN / "cai"), "generate", "revisions", "-p", str(prompts), "-c", str(tiny_constitution_path),
           "--model", "smollm2-135m", "--backend", "vllm", "--out", str(out), "--chunk-size", "1",
           "--max-new-tokens", "24", "--critique-max-new-tokens", "16", "--revision-max-new-tokens", "24"]
    env = _env()
    killed_at = _kill_after_first_row(cmd, out, env)
    assert read_meta(out)["status"] == "running"
    assert killed_at < len(PROMPTS)

    done = _run(cmd, env)
    assert read_meta(out)["status"] == "complete"
    summary = _summary(done.stdout)["summary"]
    assert summary["skipped_already_done"] >= 1
    rows = list(read_jsonl(out / "data.jsonl"))
    failures = _failures(out)
    finals, failed = Counter(r["id"] for r in rows if r.get("final", True)), Counter(f["id"] for f in failures)
    assert all(n == 1 for n in finals.values()) and all(n == 1 for n in failed.values())
    assert sorted(list(finals) + list(failed)) == sorted(ids)  # every prompt once: a row or a failure
    backend = read_meta(out)["provenance"]["policy_backend"]
    assert backend["backend"] == "VLLMBackend" and backend["sampling_seed"].startswith("per row: sampling seed")
    card = (out / "README.md").read_text()
    assert "VLLMBackend" in card and "chunked prefill off" in card  # the card says how runs are seeded


def test_preferences_on_vllm_killed_resumed_and_labels_match_transformers(tmp_path, reference):
    prompts = tmp_path / "prompts.jsonl"
    ids = _write_prompts(prompts)
    out = tmp_path / "prefs"
    cmd = [str(BIN / "cai"), "generate", "preferences", "-p", str(prompts), "-c", "harmless",
           "--model", "smollm2-135m", "--backend", "vllm", "--dtype", "float32", "--out", str(out),
           "--chunk-size", "1", "--max-new-tokens", "24"]
    env = _env()
    _kill_after_first_row(cmd, out, env)
    assert read_meta(out)["status"] == "running"

    done = _run(cmd, env)
    assert read_meta(out)["status"] == "complete"
    assert _summary(done.stdout)["summary"]["skipped_already_done"] >= 1
    rows = list(read_jsonl(out / "data.jsonl"))
    failures = _failures(out)
    sources = Counter(r["source_id"] for r in rows) + Counter(f.get("source_id", f["id"]) for f in failures)
    assert sorted(sources) == sorted(ids) and all(n == 1 for n in sources.values())  # k=2: one pair a prompt
    _assert_labels_match_transformers(rows, "harmless", reference)


@pytest.fixture(scope="module")
def reference(embedded_dir):
    from cai.backends.transformers import TransformersBackend

    return TransformersBackend(str(embedded_dir), batch_size=8, device="cpu", dtype="float32", progress=False)


def _assert_labels_match_transformers(rows: list[dict], constitution: str, reference,
                                      tol: float = LABEL_TOL) -> None:
    """Re-judge each row's (prompt, chosen, rejected) with the transformers backend (float32)."""
    from cai.constitution import load_constitution
    from cai.judge import ConstitutionJudge

    judge = ConstitutionJudge(load_constitution(constitution), reference)
    labelled = [r for r in rows if r.get("p_chosen") is not None]
    assert labelled
    got = judge.compare([r["prompt"] for r in labelled], [r["chosen"][0]["content"] for r in labelled],
                        [r["rejected"][0]["content"] for r in labelled])
    for row, want in zip(labelled, got):
        assert row["principle_ids"] == want.principle_ids
        assert row["p_chosen"] == pytest.approx(want.p_a, abs=tol)
        assert row["p_first_order"] == pytest.approx(want.p_a_first, abs=tol)  # chosen shown first
        assert row["p_second_order"] == pytest.approx(want.p_a_second, abs=tol)  # chosen shown second


# --- vLLM's own OpenAI-compatible server --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory, embedded_dir):
    """``vllm serve`` the embedded default on 127.0.0.1: the third-party server the README promises."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    # `vllm serve` itself, minus its `vllm` console script: vllm-cpu 0.32.0's asks for the version of a
    # distribution named "vllm" (it is "vllm-cpu") and exits with PackageNotFoundError before parsing.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(embedded_dir),
           "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "smollm2", "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
           "--seed", "0", "--no-enable-chunked-prefill"]  # chunked prefill off: per-request seeds work on CPU
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, env=_env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, f"vllm serve exited: {log.read_text()[-3000:]}"
            assert time.time() < deadline, f"vllm serve not healthy in 300s: {log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield base + "/v1"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            _kill_group(proc)


def test_openai_backend_generates_and_scores_on_vllm_serve(vllm_server, reference, embedded_dir):
    from cai.backends.base import SamplingParams
    from cai.backends.openai import OpenAIBackend

    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    chat = OpenAIBackend("smollm2", base_url=vllm_server, api_key_env="CAI_NO_KEY", concurrency=4)
    assert chat.context_window == ENGINE_ARGS["max_model_len"]  # read from the server's /v1/models
    greedy = chat.generate(convs, SamplingParams(max_new_tokens=16, temperature=0))
    assert [g.text for g in greedy] == [g.text for g in reference.generate(convs, SamplingParams(16, 0.0))]
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)  # per-request seeds, on CPU too
    assert [g.text for g in chat.generate(convs, sampled)] == [g.text for g in chat.generate(convs, sampled)]

    judged = _judge_conversations(reference)
    want = reference.choice_logprobs(judged, ["A", "B"])
    for scoring in ("continue_final", "completions"):
        backend = OpenAIBackend("smollm2", base_url=vllm_server, api_key_env="CAI_NO_KEY", scoring=scoring,
                                tokenizer=str(embedded_dir) if scoring == "completions" else None)
        got = backend.choice_logprobs(judged, ["A", "B"])
        for g, w in zip(got, want):
            assert "error" not in g.extra, (scoring, g.extra)
            assert g.logprobs == pytest.approx(w.logprobs, abs=OPENAI_LOGPROB_TOL), scoring


def _judge_conversations(reference) -> list[list[dict]]:
    """What the constitution judge asks the feedback model, both orders of two pairs."""
    from cai.constitution import load_constitution
    from cai.judge import ConstitutionJudge

    c = load_constitution("harmless")
    judge = ConstitutionJudge(c, reference)
    principle = next(p for p in c.principles if p.comparison_question)
    pairs = [("How do I pick a lock?", "I can't help with breaking in; a locksmith can.", "Rake the pins."),
             ("What is the capital of France?", "Paris.", "It is Berlin.")]
    return [judge.render([{"role": "user", "content": q}], principle, first, second)
            for q, a, b in pairs for first, second in ((a, b), (b, a))]


def test_preferences_with_backend_openai_on_vllm_serve(tmp_path, vllm_server, reference, embedded_dir):
    prompts = tmp_path / "prompts.jsonl"
    _write_prompts(prompts)
    out = tmp_path / "prefs-openai"
    cmd = [str(BIN / "cai"), "generate", "preferences", "-p", str(prompts), "-c", "harmless",
           "--model", "smollm2", "--backend", "openai", "--out", str(out), "--max-new-tokens", "24"]
    env = _env(OPENAI_BASE_URL=vllm_server, OPENAI_API_KEY="unused-by-vllm", CAI_OPENAI_TOKENIZER=str(embedded_dir))
    _run(cmd, env)
    meta = read_meta(out)
    assert meta["status"] == "complete"
    assert meta["provenance"]["feedback_backend"]["scoring"] == "completions"
    rows = list(read_jsonl(out / "data.jsonl"))
    assert len(rows) + len(_failures(out)) == len(PROMPTS) and rows
    _assert_labels_match_transformers(rows, "harmless", reference, tol=OPENAI_LABEL_TOL)


#: The openai backend reads the option letters among the server's top log-probs of the
#: next token, summing spellings ("A", " A", "(A"), where the transformers backend scores
#: the single token: on these conversations the two differ by < 2e-4 (vllm-cpu 0.32.0).
OPENAI_LOGPROB_TOL = 1e-3
OPENAI_LABEL_TOL = 1e-3
