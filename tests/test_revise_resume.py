"""Resume after a real interruption: `cai generate revisions` killed with SIGKILL mid-run, then rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from cai.data import FAILURES_FILE, PromptRecord, read_jsonl, read_meta
from cai.stages.revision_pairs import PREFERENCE_DIR

N_PROMPTS = 12


def _command(prompts, out, model_dir, constitution) -> list[str]:
    return [sys.executable, "-m", "cai.cli.main", "generate", "revisions", "-p", str(prompts),
            "-c", str(constitution), "--model", str(model_dir), "--out", str(out), "--chunk-size", "2",
            "--batch-size", "2", "--max-new-tokens", "8", "--critique-max-new-tokens", "6",
            "--n-revisions", "2", "--emit-all-revisions",
            "--no-gates"]  # a random tiny model's text fails the quality gates; this test is about resume


def _env() -> dict[str, str]:
    # One thread per process: the test machine is shared, and OpenMP spin-waiting under
    # contention makes multi-threaded CPU generation many times slower.
    return {**os.environ, "CAI_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _has_final_row(path) -> bool:
    try:
        with open(path, "rb") as f:
            return b'"final": true' in f.read()
    except FileNotFoundError:
        return False


def _data_lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_mid_run_then_rerun_gives_every_prompt_once(tmp_path, tiny_model_dir, tiny_constitution_path):
    prompts = tmp_path / "prompts.jsonl"
    texts = [f"Prompt number {i}: how should I handle situation {i}?" for i in range(N_PROMPTS)]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    cmd = _command(prompts, out, tiny_model_dir, tiny_constitution_path)

    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if _has_final_row(out / "data.jsonl"):  # at least one prompt fully written
            proc.send_signal(signal.SIGKILL)
            killed_at = _data_lines(out / "data.jsonl")
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    stderr = proc.stderr.read().decode()
    assert killed_at is not None, f"never saw a row before the run ended (rc={proc.returncode}): {stderr[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert read_meta(out)["status"] == "running"
    # Two rows per prompt (emit-all with 2 steps, if none degenerate): the kill left work undone.
    assert _data_lines(out / "data.jsonl") < 2 * N_PROMPTS

    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_meta(out)["status"] == "complete"

    rows = list(read_jsonl(out / "data.jsonl"))
    failures = list(read_jsonl(out / FAILURES_FILE))
    ids = [PromptRecord(messages=[{"role": "user", "content": t}]).id for t in texts]
    # Every prompt exactly once: one final row or one failure, never both, never twice.
    finals = Counter(r["id"] for r in rows if r["final"])
    failed = Counter(f["id"] for f in failures)
    assert all(n == 1 for n in finals.values()) and all(n == 1 for n in failed.values())
    assert sorted(list(finals) + list(failed)) == sorted(ids)
    assert len({r["id"] for r in rows}) == len(rows)  # no duplicated row of any step
    assert '"skipped_already_done"' in done.stdout
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["summary"]["skipped_already_done"] >= 1
    # The preference view is rebuilt from the final rows: one pair per revised prompt.
    pref = list(read_jsonl(out / PREFERENCE_DIR / "data.jsonl"))
    assert sorted(p["id"] for p in pref) == sorted(finals)
