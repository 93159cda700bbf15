"""The standing fault harness: SIGKILL at seeded points, resume, and get what an uninterrupted run gets.

For each of `cai generate revisions`, `cai generate preferences` and `cai run`, an
uninterrupted reference run first records every *fault point* it passes, in order:

* ``row``: a row line being appended to a dataset (data.jsonl or .cai/failures.jsonl);
  a kill here leaves the first half of that line on disk, a torn line;
* ``train``: a trainer about to train (models loaded, nothing saved);
* ``step``: a training step about to run (`cai run` checkpoints every step here, so a kill
  mid-training resumes from the step before);
* ``saved``: a model's weights just saved, a checkpoint's or the final model's (the rest of
  the checkpoint, or the tokenizer and training summary, not yet);
* ``manifest``: `cai run`'s manifest about to be saved (the stage's status not recorded).

A seeded draw then picks points along that sequence (at least one of each kind), and
each chosen point becomes one real process killed there with SIGKILL; each next
process resumes the run and is killed at the next point, and a last one finishes it.
The result must equal the reference byte for byte: every row of every dataset (and the
failure rows), each dataset's counts and deterministic summary fields, and for `cai
run` the trained weights, metrics.json and the final policy.

Each process is a fork of this test process that runs the `cai` command in-process,
so nothing is imported twice (a kill point costs the work redone, not a Python start);
the fault points are hooks patched into that child only, so cai itself carries none.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_revise_resume import _command as revisions_command
from test_rounds import write_config

KINDS = ("row", "train", "step", "saved", "manifest")
#: Summary fields that depend only on the rows (not on timing or on how many invocations made them).
SUMMARY_KEYS = ("prompts", "failed_by_reason", "labeller", "preference_pairs")


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """Import what the commands use once, here, so that each forked child starts warm."""
    import trl.trainer.reward_trainer
    import trl.trainer.sft_trainer

    import cai.cli.main
    import cai.rounds.runner
    import cai.training.ppo
    import cai.training.reward
    import cai.training.runner
    from cai.training.ppo import PPO

    PPO.trainer_cls()  # trl.experimental.ppo


# --- the child process and its fault points ------------------------------------------------


def _install_fault_points(kill: tuple[str, int] | None, events: Path) -> None:
    """Patch the fault points into this (child) process; SIGKILL it at the n-th point of a kind."""
    import transformers

    import cai.data
    import cai.rounds.manifest
    import cai.training.runner

    seen: Counter[str] = Counter()

    def point(kind: str, where: str) -> bool:
        seen[kind] += 1
        with events.open("a", encoding="utf-8") as f:
            f.write(f"{kind} {where}\n")
        return kill == (kind, seen[kind])

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    append = cai.data.DatasetWriter._append

    def _append(self, path: Path, rows) -> int:
        n = 0
        for row in rows:  # one line at a time, each flushed and fsynced by the real writer
            if point("row", f"{self.dir.name}/{path.relative_to(self.dir)}"):
                line = json.dumps(row, ensure_ascii=False) + "\n"
                with path.open("a", encoding="utf-8") as f:
                    f.write(line[: len(line) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                die()
            n += append(self, path, [row])
        return n

    run_training = cai.training.runner.run_training

    def _run_training(trainer: Any, *args: Any) -> Any:
        if point("train", Path(trainer.args.output_dir).parent.name):  # OUT/checkpoints
            die()
        return run_training(trainer, *args)

    training_step = transformers.Trainer.training_step

    def _training_step(self, *args: Any, **kwargs: Any) -> Any:
        if point("step", f"{Path(self.args.output_dir).parent.name}/{self.state.global_step + 1}"):
            die()
        return training_step(self, *args, **kwargs)

    save_pretrained = transformers.PreTrainedModel.save_pretrained

    def _save_pretrained(self, save_directory, *args, **kwargs):
        out = save_pretrained(self, save_directory, *args, **kwargs)
        if point("saved", Path(save_directory).name):
            die()
        return out

    save_manifest = cai.rounds.manifest.RunManifest.save

    def _save_manifest(self) -> None:
        if point("manifest", "manifest.json"):
            die()
        save_manifest(self)

    cai.data.DatasetWriter._append = _append
    cai.training.runner.run_training = _run_training
    transformers.Trainer.training_step = _training_step
    transformers.PreTrainedModel.save_pretrained = _save_pretrained
    cai.rounds.manifest.RunManifest.save = _save_manifest


def _run(args: list[str], work: Path, kill: tuple[str, int] | None = None) -> tuple[int | None, list[str]]:
    """Run ``cai ARGS`` in a forked child: (exit code, or None when SIGKILLed; the fault points it passed)."""
    tag = f"{len(list(work.glob('events-*')))}"
    events, log = work / f"events-{tag}.txt", work / f"log-{tag}.txt"
    events.touch()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", encoding="utf-8", buffering=1)  # not pytest's capture
            import torch

            torch.set_num_threads(1)  # an OpenMP pool is not safe to use across fork
            _install_fault_points(kill, events)
            from cai.cli.main import cli

            cli.main(args, prog_name="cai", standalone_mode=False)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    passed = events.read_text(encoding="utf-8").splitlines()
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, log.read_text()[-3000:]
        return None, passed
    code = os.WEXITSTATUS(status)
    assert code == 0, f"cai {' '.join(args)} exited {code}:\n{log.read_text()[-3000:]}"
    return code, passed


def _schedule(reference: list[str], n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` kill points along the reference run's fault points, one of each kind there at least.

    Each is (kind, k): the k-th point of that kind in the process that resumes from the
    previous kill, i.e. counted from the previous pick in the reference sequence.
    """
    rng = random.Random(seed)
    kinds = [e.split()[0] for e in reference]
    picks = {rng.choice([i for i, k in enumerate(kinds) if k == kind]) for kind in sorted(set(kinds))}
    rest = [i for i in range(len(kinds)) if i not in picks]
    picks |= set(rng.sample(rest, n - len(picks)))
    return _as_schedule(kinds, picks)


def _as_schedule(kinds: list[str], picks: set[int]) -> list[tuple[str, int]]:
    """Indices into the reference's points -> (kind, k) counted from the previous pick."""
    out, last = [], -1
    for p in sorted(picks):
        out.append((kinds[p], kinds[last + 1 : p + 1].count(kinds[p])))
        last = p
    return out


def _killed_and_resumed(first: list[str], again: list[str], work: Path, reference: list[str], n: int,
                        seed: int, schedule: list[tuple[str, int]] | None = None) -> list[str]:
    """Kill ``first`` at the first scheduled point, resume with ``again`` through the rest, then finish.

    Returns where each kill landed.
    """
    landed = []
    for i, point in enumerate(schedule if schedule is not None else _schedule(reference, n, seed)):
        code, passed = _run(first if i == 0 else again, work, kill=point)
        assert code is None, f"the run finished before kill point {i} {point} (passed {len(passed)} points)"
        landed.append(passed[-1])
    code, _ = _run(again, work)
    assert code == 0
    return landed


# --- what must come out the same -----------------------------------------------------------


def _datasets(root: Path) -> dict[str, Any]:
    """Every dataset directory under ``root``: its sorted row lines, failure lines, counts and summary."""
    from cai.data import DATA_FILE, FAILURES_FILE, read_meta

    out: dict[str, Any] = {}
    for meta in sorted(root.rglob(".cai/cai_dataset.json")):
        d = meta.parent.parent
        m = read_meta(d)
        lines = {name: sorted((d / name).read_bytes().splitlines()) if (d / name).exists() else []
                 for name in (DATA_FILE, FAILURES_FILE)}
        out[str(d.relative_to(root))] = {
            **lines, "status": m["status"], "counts": m["counts"],
            # the same settings; paths into the run directory (a policy trained in it) name the other one
            "fingerprint": json.dumps(m["fingerprint"], sort_keys=True).replace(str(root), "<out>"),
            "summary": {k: m["summary"][k] for k in SUMMARY_KEYS if k in m["summary"]},
        }
    return out


def _assert_same_datasets(got: Path, want: Path) -> None:
    a, b = _datasets(got), _datasets(want)
    assert a and sorted(a) == sorted(b)
    for name in b:
        assert b[name]["status"] == "complete", name
        ids = [json.loads(line)["id"] for line in a[name]["data.jsonl"]]
        assert len(ids) == len(set(ids)), f"{name}: a row written twice"
        for key in b[name]:
            assert a[name][key] == b[name][key], f"{name}: {key} differs from the uninterrupted run"


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    texts = [f"Prompt {i}: how should I handle situation {i}?" for i in range(8)]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts), encoding="utf-8")
    return path


# --- the three commands --------------------------------------------------------------------


def test_revisions_killed_at_seeded_points_resume_to_the_same_rows(tmp_path, prompts, tiny_model_dir,
                                                                   tiny_constitution_path):
    def args(out: Path) -> list[str]:
        cmd = revisions_command(prompts, out, tiny_model_dir, tiny_constitution_path)
        return cmd[cmd.index("generate"):]

    _, reference = _run(args(tmp_path / "ref"), tmp_path)
    landed = _killed_and_resumed(args(tmp_path / "out"), args(tmp_path / "out"), tmp_path, reference, n=7, seed=16)
    assert len(landed) == 7 and any(e.startswith("row preference/") for e in landed)  # the view too
    _assert_same_datasets(tmp_path / "out", tmp_path / "ref")


def test_preferences_killed_at_seeded_points_resume_to_the_same_rows(tmp_path, prompts, tiny_model_dir,
                                                                     tiny_constitution_path):
    def args(out: Path) -> list[str]:
        return ["generate", "preferences", "-p", str(prompts), "-c", str(tiny_constitution_path),
                "--model", str(tiny_model_dir), "--out", str(out), "--chunk-size", "2", "--batch-size", "2",
                "--max-new-tokens", "6", "--k-responses", "3"]

    _, reference = _run(args(tmp_path / "ref"), tmp_path)
    landed = _killed_and_resumed(args(tmp_path / "out"), args(tmp_path / "out"), tmp_path, reference, n=7, seed=61)
    assert len(landed) == 7
    _assert_same_datasets(tmp_path / "out", tmp_path / "ref")


def _training_run(tmp_path: Path, tiny_model_dir: Path, monkeypatch: Any, sft_steps: int,
                  reward_steps: int) -> tuple[Path, Path, list[str], list[str]]:
    """A one-round `cai run` config checkpointing after every step, and its uninterrupted reference run."""
    import cai.training.checkpoints

    monkeypatch.setattr(cai.training.checkpoints, "EVERY_SECONDS", 0.0)
    cfg = write_config(tmp_path / "run.yaml", tiny_model_dir, rounds=1, **{
        "per_round: 6": "per_round: 4", "sft: {config: {max_steps: 1": f"sft: {{config: {{max_steps: {sft_steps}",
        "reward: {config: {max_steps: 1": f"reward: {{config: {{max_steps: {reward_steps}"})
    ref, out = tmp_path / "ref", tmp_path / "out"
    _, reference = _run(["run", str(cfg), "--out", str(ref), "--no-report"], tmp_path)
    return ref, out, reference, ["run", str(cfg), "--out", str(out), "--no-report"]


def _assert_same_weights_and_metrics(out: Path, ref: Path) -> None:
    for stage in ("sft", "reward", "rl"):
        assert (out / "round-1" / stage / "model.safetensors").read_bytes() == \
            (ref / "round-1" / stage / "model.safetensors").read_bytes(), f"{stage} weights differ"
        assert not (out / "round-1" / stage / "checkpoints").exists()
    assert (out / "round-1/eval/metrics.json").read_bytes() == (ref / "round-1/eval/metrics.json").read_bytes()


def test_cai_run_killed_at_seeded_points_resumes_to_the_same_data_weights_and_metrics(tmp_path, tiny_model_dir,
                                                                                      monkeypatch):
    ref, out, reference, first = _training_run(tmp_path, tiny_model_dir, monkeypatch, 6, 4)
    landed = _killed_and_resumed(first, [*first, "--resume"], tmp_path, reference, n=12, seed=29)
    assert len(landed) == 12
    assert {e.split()[0] for e in landed} == set(KINDS)  # every kind of point, training included
    assert len({e.split()[1].split("/")[0] for e in landed if e.startswith("row ")}) >= 3  # in several stages
    _assert_same_datasets(out, ref)
    _assert_same_weights_and_metrics(out, ref)
    got, want = (json.loads((d / "manifest.json").read_text()) for d in (out, ref))
    assert all(s["status"] == "complete" for s in got["stages"].values())
    assert sorted(got["stages"]) == sorted(want["stages"])
    assert Path(got["final_policy"]).relative_to(out) == Path(want["final_policy"]).relative_to(ref)


def test_cai_run_killed_inside_training_resumes_to_the_same_weights(tmp_path, tiny_model_dir, monkeypatch):
    """Killed at every third step and checkpoint save of SFT, reward and RL: each resume starts from
    the newest complete checkpoint (a kill mid-save leaves the one before), and the weights come
    out as an uninterrupted run's, byte for byte."""
    ref, out, reference, first = _training_run(tmp_path, tiny_model_dir, monkeypatch, 8, 6)
    inside = [i for i, e in enumerate(reference) if e.startswith("step ") or e.startswith("saved checkpoint-")]
    landed = _killed_and_resumed(first, [*first, "--resume"], tmp_path, reference, 0, 0,
                                 schedule=_as_schedule([e.split()[0] for e in reference], set(inside[1::3])))
    assert len(landed) >= 5 and {e.split()[0] for e in landed} == {"step", "saved"}
    _assert_same_weights_and_metrics(out, ref)
