"""RayBackend: shards each batch over real Ray worker processes, merges in order, resumes through run_stage.

Ray 2.60 has no local mode, so this starts a small local cluster (2 CPUs) once
for the module and shuts it down at the end.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import ray
from fakes import ScriptedBackend

from cai.backends import make_backend
from cai.backends.base import SamplingParams
from cai.backends.ray_pool import RayBackend, shard_bounds
from cai.data import DatasetWriter, PromptRecord, read_rows
from cai.errors import UserInputError
from cai.stages import responses as stage
from cai.stages.runner import run_stage
from cai.templates import PromptTemplates


@pytest.fixture(scope="module")
def ray_cluster():
    # Workers import `fakes` (pickled by reference) from the tests directory.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    try:
        yield
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


def tagged_reply(conv):
    """The reply names the prompt and the worker process that wrote it."""
    return f"{conv[-1]['content'][-6:]}|pid={os.getpid()}"


def test_shard_bounds_cover_in_order():
    assert shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert shard_bounds(1, 3) == [(0, 1)]
    assert shard_bounds(0, 2) == []
    assert [i for s, e in shard_bounds(17, 4) for i in range(s, e)] == list(range(17))


def test_scripted_replicas_merge_in_order_and_resume(ray_cluster, tmp_path):
    factory = functools.partial(ScriptedBackend, respond=tagged_reply, model_id="scripted-x")
    with RayBackend(factory, replicas=2) as pool:
        pids = {info["pid"] for info in pool.replica_info}
        assert len(pids) == 2 and os.getpid() not in pids
        assert pool.model_id == "scripted-x" and pool.describe()["replicas"] == 2

        convs = [[{"role": "user", "content": f"prompt-{i:02d}"}] for i in range(7)]
        gens = pool.generate(convs, SamplingParams(max_new_tokens=8))
        assert [g.text.split("|")[0] for g in gens] == [f"mpt-{i:02d}" for i in range(7)]
        used = {g.text.split("pid=")[1] for g in gens}
        assert used == {str(p) for p in pids}  # both replicas did work
        scores = pool.choice_logprobs(convs[:3], ["A", "B"])
        assert len(scores) == 3 and all(len(s.logprobs) == 2 for s in scores)
        with pytest.raises(UserInputError, match="not distinct"):  # the replica's own error, one line
            pool.choice_logprobs(convs[:1], ["A", "A"])

        # A stage runs unchanged on the pool; a second run over more prompts resumes, no duplicates.
        templates = PromptTemplates()
        params = SamplingParams(max_new_tokens=8, temperature=0)
        records = [PromptRecord(messages=[{"role": "user", "content": f"question {i}"}], id=f"r{i}")
                   for i in range(6)]

        def run(recs):
            writer = DatasetWriter(tmp_path / "ds", kind="responses",
                                   fingerprint=stage.fingerprint(pool, templates, params, None))
            stats = run_stage(recs, writer, lambda chunk: stage.generate_responses(
                chunk, pool, templates, params=params), chunk_size=2, progress=False)
            writer.finalize(stats.to_dict())
            return stats

        first = run(records[:3])
        second = run(records)
        assert (first.rows, second.done_before, second.rows) == (3, 3, 3)
        rows = read_rows(tmp_path / "ds")
        assert [r["id"] for r in rows] == [f"r{i}" for i in range(6)]
    assert pool.actors == []


def test_transformers_replicas_match_one_local_backend(ray_cluster, tiny_model_dir, tiny_backend_fp32):
    # fp32 on both sides: in bf16 (auto on a CPU with bf16 units) rounding depends on the batch shape, and the
    # pool's shards batch differently from one local call (a fresh clone once differed by 2.6e-4).
    tiny_backend = tiny_backend_fp32
    pool = make_backend(str(tiny_model_dir), kind="ray", replicas=2, batch_size=4, device="cpu", dtype="float32")
    try:
        assert isinstance(pool, RayBackend) and pool.describe()["inner_backend"] == "TransformersBackend"
        convs = [[{"role": "user", "content": "word " * (i + 1)}] for i in range(6)]
        params = SamplingParams(max_new_tokens=4, temperature=0)
        remote = pool.generate(convs, params)
        # Same shards as the pool used, so the same batches: greedy output must agree token for token.
        local = [g for s, e in shard_bounds(6, 2) for g in tiny_backend.generate(convs[s:e], params)]
        assert [g.prompt_tokens for g in remote] == [tiny_backend.count_tokens(c) for c in convs]
        assert [g.text for g in remote] == [g.text for g in local]
        scores = pool.choice_logprobs(convs, ["A", "B"])
        expected = tiny_backend.choice_logprobs(convs, ["A", "B"])
        for got, want in zip(scores, expected):
            assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
        assert pool.count_tokens(convs[2]) == tiny_backend.count_tokens(convs[2])
    finally:
        pool.close()
