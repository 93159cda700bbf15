"""`cai run`: two rounds on a tiny model, a real kill + --resume, config errors before models load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai.cli.main import cli
from cai.data import FAILURES_FILE, read_jsonl, read_meta

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
name: tiny
rounds: {rounds}
chunk_size: 2
constitution: {constitution}
models: {{policy: {model}, feedback: policy, batch_size: 8}}
prompts: {{red_team: {red}, helpful: {helpful}, held_out: 2, per_round: 6, labelled_pairs: {pairs}}}
stages:
  revisions: {{response: {{max_new_tokens: 8}}, critique: {{max_new_tokens: 8}}, revision: {{max_new_tokens: 8}},
              gates: {{exemplar_overlap: null, prompt_overlap: false}}}}
  helpful: {{max_new_tokens: 8}}
  sft: {{config: {{max_steps: 1, max_length: 256}}}}
  preferences: {{max_new_tokens: 8}}
  reward: {{config: {{max_steps: 1, max_length: 256}}}}
  rl: {{config: {{total_episodes: 4, per_device_train_batch_size: 2, response_length: 8, num_ppo_epochs: 1}}}}
  eval: {{max_new_tokens: 8, labeller_signals: [judge, loglik, implicit]}}
"""


def write_config(path: Path, model: Path, rounds: int = 2, **changes: str) -> Path:
    text = CONFIG.format(rounds=rounds, model=model, constitution=ROOT / "tests/fixtures/tiny_constitution.yaml",
                         red=ROOT / "examples/prompts/red_team.jsonl", helpful=ROOT / "examples/prompts/helpful.jsonl",
                         pairs=ROOT / "tests/fixtures/labelled_pairs.jsonl")
    for old, new in changes.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


def stage_ids(run_dir: Path, stage: str) -> tuple[list[str], list[str]]:
    d = run_dir / stage
    return [r["id"] for r in read_jsonl(d / "data.jsonl")], [r["id"] for r in read_jsonl(d / FAILURES_FILE)]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("rounds")
    cfg = write_config(tmp / "run.yaml", tiny_model_dir)
    result = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    return tmp / "run", result.output


def test_two_rounds_complete_with_manifest_and_report(two_rounds):
    run_dir, output = two_rounds
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    assert len(stages) == 16 and all(s["status"] == "complete" for s in stages.values())
    assert all(s["peak_rss_gb"] > 0 for s in stages.values())  # where the memory went, stage by stage
    # round 2 starts from round 1's RL policy
    resolved = read_meta(run_dir / "round-2/revisions")
    assert resolved["fingerprint"]["policy"] == str(run_dir / "round-1" / "rl")
    metrics = json.loads((run_dir / "round-2/eval/metrics.json").read_text())
    assert set(metrics["win_rates"]) == {"vs round-0", "vs round-1"}
    assert set(metrics["reward"]) == {"round-0", "round-1", "round-2"}
    for k in (1, 2):
        assert (run_dir / f"round-{k}/rl/model.safetensors").exists()
        ids, failed = stage_ids(run_dir, f"round-{k}/revisions")
        assert len(ids) + len(failed) == 6 and len(set(ids)) == len(ids)
    report = (run_dir / "report.md").read_text()
    assert "win rate vs round 0" in report and "## Provenance" in report
    assert list(run_dir.glob("plot_*.png")) and (run_dir / "report.html").exists()
    assert "report:" in output


def test_status_shows_every_stage(two_rounds):
    run_dir, _ = two_rounds
    r = CliRunner().invoke(cli, ["status", str(run_dir)])
    assert r.exit_code == 0 and r.output.count("complete") == 16


def test_resume_of_finished_run_skips_everything_and_refuses_changed_config(two_rounds, tmp_path, tiny_model_dir):
    run_dir, _ = two_rounds
    cfg = write_config(tmp_path / "run.yaml", tiny_model_dir)
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(run_dir), "--resume", "--no-report"])
    assert r.exit_code == 0, r.output
    assert r.output.count("done, skipping") == 16
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(run_dir)])
    assert r.exit_code == 2 and "--resume" in r.output
    changed = write_config(tmp_path / "changed.yaml", tiny_model_dir,
                           **{"sft: {config: {max_steps: 1": "sft: {config: {max_steps: 2"})
    assert "max_steps: 2" in changed.read_text()
    r = CliRunner().invoke(cli, ["run", str(changed), "--out", str(run_dir), "--resume", "--no-report"])
    assert r.exit_code == 2 and "round-1/sft finished with another config" in r.output and "--force sft" in r.output
    assert "max_steps: 1" in (run_dir / "config.yaml").read_text()  # the refused config is not recorded


def test_kill_mid_stage_then_resume_matches_uninterrupted(two_rounds, tmp_path, tiny_model_dir):
    run_dir, _ = two_rounds
    cfg = write_config(tmp_path / "run.yaml", tiny_model_dir, rounds=1)
    out = tmp_path / "run"
    env = {**os.environ, "CAI_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "cai.cli.main", "run", str(cfg), "--out", str(out), "--no-report"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    revisions = out / "round-1" / "revisions"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait for the first chunk of revisions, then kill hard
            done = sum(1 for _ in read_jsonl(revisions / "data.jsonl")) + sum(1 for _ in read_jsonl(revisions / FAILURES_FILE))
            if done >= 1 or proc.poll() is not None:
                break
            time.sleep(0.01)  # a tiny-model chunk takes ~0.1 s: poll well inside that
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    ids, failed = stage_ids(out, "round-1/revisions")
    assert 0 < len(ids) + len(failed) < 6, "the kill should land mid-stage"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["round-1/revisions"]["status"] == "running"

    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[round-1/revisions] resuming" in r.stdout
    for stage in ("revisions", "helpful", "preferences"):
        got_rows, got_failed = stage_ids(out, f"round-1/{stage}")
        ref_rows, ref_failed = stage_ids(run_dir, f"round-1/{stage}")
        assert len(got_rows) == len(set(got_rows)), f"duplicates in {stage}"
        assert sorted(got_rows + got_failed) == sorted(ref_rows + ref_failed), stage
    assert json.loads((out / "manifest.json").read_text())["stages"]["round-1/eval"]["status"] == "complete"


def test_config_typo_fails_before_any_model_loads(tmp_path):
    # The model path does not exist: if anything tried to load it, the error would be about the model.
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "no-model", rounds=1,
                       **{"reward: {config:": "reward: {confg:"})
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "run.yaml:13: field 'stages.reward.confg': unknown key" in r.output
    assert not (tmp_path / "run").exists()
    cfg = write_config(tmp_path / "run2.yaml", tmp_path / "no-model", rounds=1,
                       **{"sft: {config: {max_steps": "sft: {config: {max_stepz"})
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "unknown SFTConfig field 'max_stepz'; did you mean max_steps?" in r.output


def test_keep_samples_false_two_rounds_and_a_short_pipeline(tmp_path, tiny_model_dir):
    """keep_samples: false over two rounds once raised KeyError; a pipeline without RL ends at SFT."""
    cfg = write_config(tmp_path / "run.yaml", tiny_model_dir,
                       **{"eval: {max_new_tokens: 8,": "eval: {max_new_tokens: 8, keep_samples: false,",
                          "stages:\n": "pipeline: [revisions, helpful, sft-data, sft, eval]\nstages:\n"})
    assert "keep_samples: false" in cfg.read_text()
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(out), "--no-report"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["final_policy"] == str(out / "round-2" / "sft")
    metrics = json.loads((out / "round-2/eval/metrics.json").read_text())
    assert set(metrics["win_rates"]) == {"vs round-0", "vs round-1"} and metrics["samples"] == []
    assert "samples" not in json.loads((out / "round-2/eval/eval.json").read_text())["models"]["round-2"]
    # round 2's revisions start from round 1's SFT model: the policy stage of this pipeline
    card = read_meta(out / "round-2/revisions")
    assert card["fingerprint"]["policy"] == str(out / "round-1" / "sft")


def test_forcing_revisions_reruns_what_reads_them_only(two_rounds, tmp_path, tiny_model_dir):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(two_rounds[0], run_dir)
    cfg = write_config(tmp_path / "run.yaml", tiny_model_dir, rounds=1)
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(run_dir), "--resume", "--no-report",
                                 "--force", "revisions"])
    assert r.exit_code == 0, r.output
    assert "[round-1/helpful] done, skipping" in r.output
    for stage in ("revisions", "sft-data", "sft", "preferences", "reward", "rl", "eval"):
        assert f"[round-1/{stage}] running" in r.output or f"[round-1/{stage}] restarting" in r.output, stage


def test_status_json_is_a_stable_machine_readable_contract(two_rounds):
    run_dir, _ = two_rounds
    r = CliRunner().invoke(cli, ["status", str(run_dir), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["schema"] == 1 and data["complete"] is True
    assert data["final_policy"] == str(run_dir / "round-2" / "rl")
    assert len(data["stages"]) == 16 and data["stages"][0]["stage"] == "round-1/revisions"
    assert [x["round"] for x in data["rounds"]] == [1, 2]
    m = data["rounds"][1]["metrics"]
    assert set(m["win_rates"]) == {"vs round-0", "vs round-1"}
    assert set(m["paired"]) == {"round-2 vs round-0", "round-2 vs round-1"}
    assert m["paired"]["round-2 vs round-0"]["red_team_refusal"]["method"] == "McNemar exact (paired)"
    out = m["outcome"]["round-2"]
    assert {"red_team_refusal", "benign_refusal", "benign_look_unsafe_refusal", "benign_distinct_2"} <= set(out)
    assert out["red_team_refusal"]["n"] == 2 and 0 <= out["red_team_refusal"]["low"] <= out["red_team_refusal"]["high"]


def test_feedback_model_follows_the_policy_and_is_measured_each_round(two_rounds):
    """feedback: policy: round 2 labels and judges with round 1's final model, and every round says so."""
    run_dir, _ = two_rounds
    data = json.loads(CliRunner().invoke(cli, ["status", str(run_dir), "--json"]).output)
    r1, r2 = (x["metrics"] for x in data["rounds"])
    assert r1["feedback_model"] != r2["feedback_model"]
    assert r2["feedback_model"] == str(run_dir / "round-1" / "rl")
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert manifest["round-2/preferences"]["summary"]["feedback_model"] == str(run_dir / "round-1" / "rl")
    assert read_meta(run_dir / "round-2" / "preferences")["summary"]["feedback_model"] == str(run_dir / "round-1" / "rl")
    # The labeller is measured on the pair set before it labels, and the choice of source reads it.
    check = manifest["round-2/preferences"]["summary"]["labeller_check"]
    assert set(check["directions"]) == {"refusal", "answer", "quality"} and check["pairs"] == 6
    why = manifest["round-2/reward"]["summary"]["label_source_why"]
    assert "labeller agreement with the labelled pairs" in why
    # eval: round 0's model and the round's new one, each signal; the implicit reward only against round 0.
    checks = r2["labeller_check"]
    assert set(checks) == {"round-0", "round-2"}
    assert set(checks["round-0"]) == {"judge", "loglik"} and set(checks["round-2"]) == {"judge", "loglik", "implicit"}
    for fig in checks["round-2"].values():
        assert {d: v["n"] for d, v in fig["directions"].items()} == {"refusal": 2, "answer": 2, "quality": 2}
    # The card's chain: every row model-written, every label model-made; the report shows the shares.
    assert r2["provenance"]["sft"]["text"] == {"model": 1.0}
    assert r2["provenance"]["reward"]["text"] == {"model": 1.0} and r2["provenance"]["reward"]["label"] == {"model": 1.0}
    from cai.report import write_report

    write_report(run_dir)
    report = (run_dir / "report.md").read_text()
    assert f"round 2: {run_dir / 'round-1' / 'rl'}" in report and "good > flawed answer" in report
    assert "constitution text" in report and "model-labelled" in report


def test_a_fixed_feedback_model_does_not_make_round_two_read_round_one(tmp_path, tiny_model_dir):
    from cai.rounds import load_run_config
    from cai.rounds.runner import Run
    from cai.rounds.spec import get_stage

    follow = Run(load_run_config(write_config(tmp_path / "a.yaml", tiny_model_dir)), tmp_path / "a")
    fixed = Run(load_run_config(write_config(tmp_path / "b.yaml", tiny_model_dir,
                                             **{"feedback: policy": f"feedback: {tiny_model_dir}"})), tmp_path / "b")
    # eval reads the round's policy anyway; rl reads the feedback model only through models.feedback.
    assert "round-1/rl" in follow._upstream(2, get_stage("rl"))
    assert "round-1/rl" not in fixed._upstream(2, get_stage("rl"))
    assert follow._upstream(1, get_stage("rl")) == fixed._upstream(1, get_stage("rl"))


def own_feedback_run(tmp_path: Path, model: Path, scored: str, dpo: str) -> Path:
    """A 2-round tiny run: round 1 bootstraps with SFT, round 2 is scored-pairs -> dpo -> eval; returns its dir."""
    cfg = write_config(tmp_path / "run.yaml", model, **{
        "stages:\n": "pipeline: [revisions, helpful, sft-data, sft, eval]\n"
                     "pipeline_from: {2: [scored-pairs, dpo, eval]}\nstages:\n",
        "  eval: {": f"  scored_pairs: {{{scored}}}\n  dpo: {{{dpo}}}\n  eval: {{"})
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_later_rounds_run_their_own_pipeline_on_the_models_own_feedback(tmp_path, tiny_model_dir):
    """pipeline_from: round 1 bootstraps (SFT), round 2 learns only from its own samples and own labels."""
    out = own_feedback_run(tmp_path, tiny_model_dir, "k_responses: 2, max_new_tokens: 8, signal: pmi",
                           "config: {max_steps: 1, max_length: 256}")
    cfg = tmp_path / "run.yaml"
    data = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert [s["stage"] for s in data["stages"]] == [
        "round-1/revisions", "round-1/helpful", "round-1/sft-data", "round-1/sft", "round-1/eval",
        "round-2/scored-pairs", "round-2/dpo", "round-2/eval"]
    assert data["complete"] and data["final_policy"] == str(out / "round-2" / "dpo")
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    # Round 2's policy and feedback model are round 1's SFT model; DPO starts from it.
    assert stages["round-2/scored-pairs"]["summary"]["feedback_model"] == str(out / "round-1" / "sft")
    dpo = stages["round-2/dpo"]["summary"]
    assert dpo["label_source"] == "scored" and "no other source" in dpo["label_source_why"]
    m2 = data["rounds"][1]["metrics"]
    assert m2["provenance"]["dpo"]["text"] == {"model": 1.0} and m2["provenance"]["dpo"]["label"] == {"model": 1.0}
    assert set(m2["outcome"]) == {"round-0", "round-1", "round-2"}
    rows = read_jsonl(out / "round-2" / "scored-pairs" / "data.jsonl")
    assert all(row["label_source"] == "scored" and row["signal"] == "pmi" for row in rows)
    # A resume with more rounds continues in the later pipeline; nothing finished reruns.
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(out), "--resume", "--rounds", "3"])
    assert r.exit_code == 0, r.output
    assert "[round-2/dpo] done, skipping" in r.output and "[round-3/scored-pairs] running" in r.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["round-3/scored-pairs"]["summary"]["feedback_model"] == str(out / "round-2" / "dpo")
    assert json.loads((out / "manifest.json").read_text())["final_policy"] == str(out / "round-3" / "dpo")


def test_the_labelled_pair_set_enters_only_the_keys_of_the_stages_that_read_it(tmp_path, tiny_model_dir):
    from cai.rounds import load_run_config
    from cai.rounds.runner import Run
    from cai.rounds.spec import get_stage

    with_pairs = Run(load_run_config(write_config(tmp_path / "a.yaml", tiny_model_dir)), tmp_path / "a")
    cfg = load_run_config(write_config(tmp_path / "b.yaml", tiny_model_dir))
    cfg.prompts = cfg.prompts.model_copy(update={"labelled_pairs": None})
    without = Run(cfg, tmp_path / "b")
    for name, same in (("revisions", True), ("sft", True), ("reward", True), ("preferences", False), ("eval", False)):
        a, b = with_pairs._key(1, get_stage(name))[0], without._key(1, get_stage(name))[0]
        assert (a == b) is same, name


def test_untrusted_own_labels_can_be_skipped_and_the_policy_passes_through(tmp_path, tiny_model_dir):
    """if_untrusted: skip: round 2's only pairs fail their pair-set check, so DPO keeps round 1's model."""
    out = own_feedback_run(tmp_path, tiny_model_dir, "k_responses: 2, max_new_tokens: 8, signal: loglik",
                           "if_untrusted: skip, min_agreement: 1.0, config: {max_steps: 1, max_length: 256}")
    dpo = json.loads((out / "manifest.json").read_text())["stages"]["round-2/dpo"]["summary"]
    assert dpo["skipped"] is True and "if_untrusted: skip, so no training" in dpo["label_source_why"]
    same = (out / "round-2" / "dpo" / "model.safetensors").read_bytes() == \
        (out / "round-1" / "sft" / "model.safetensors").read_bytes()
    assert same


def test_later_round_settings_leave_round_one_and_its_keys_alone(tmp_path, tiny_model_dir):
    """stages_from: round 2's settings merge over `stages` (nested keys one by one); round 1 keeps its own."""
    from cai.rounds import load_run_config
    from cai.rounds.runner import Run
    from cai.rounds.spec import get_stage

    plain = load_run_config(write_config(tmp_path / "a.yaml", tiny_model_dir))
    later = load_run_config(write_config(tmp_path / "b.yaml", tiny_model_dir, **{
        "stages:\n": "stages_from: {2: {sft: {decision_tokens: 3, config: {max_steps: 7}}},\n"
                     "              3: {sft: {config: {learning_rate: 1.0e-7}}}}\nstages:\n"}))
    assert later.section("sft", 1) == plain.section("sft", 1) == plain.section("sft")
    r2, r3 = later.section("sft", 2), later.section("sft", 3)
    assert r2.decision_tokens == 3 and r2.config["max_steps"] == 7
    # Round 3 inherits round 2's settings and adds its own; the rest of the nested config is kept.
    assert r3.decision_tokens == 3 and r3.config["max_steps"] == 7 and r3.config["learning_rate"] == 1.0e-7
    assert r3.config["max_length"] == 256
    a, b = Run(plain, tmp_path / "a"), Run(later, tmp_path / "b")
    assert a._key(1, get_stage("sft"))[0] == b._key(1, get_stage("sft"))[0]
    assert a._key(2, get_stage("sft"))[0] != b._key(2, get_stage("sft"))[0]


def test_a_vote_round_with_nothing_to_vote_on_keeps_its_policy(tmp_path, tiny_model_dir):
    """vote end to end on a tiny model: its samples' implicit rewards never split in two decisions, so every
    prompt is a recorded 'unanimous' failure, and DPO passes round 1's model through and says why."""
    out = own_feedback_run(tmp_path, tiny_model_dir,
                           "k_responses: 3, max_new_tokens: 6, signal: vote, use_system_prompt: false",
                           "config: {max_steps: 1, max_length: 256}")
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    sp = stages["round-2/scored-pairs"]["summary"]
    assert sp["signal"] == "vote" and sp["counts"]["rows"] == 0 and sp["counts"]["failed"] > 0
    assert sp["no_pair"] == sp["counts"]["failed"]  # recorded, and not a failure the report flags
    assert sp["labeller_check"]["labelled_directions"] == ["refusal", "answer"]
    reasons = {f["reason"] for f in read_jsonl(out / "round-2" / "scored-pairs" / FAILURES_FILE)}
    assert reasons == {"unanimous"}
    dpo = stages["round-2/dpo"]["summary"]
    assert dpo["skipped"] is True and "no preference rows, so no training" in dpo["label_source_why"]
    assert (out / "round-2" / "dpo" / "model.safetensors").read_bytes() == \
        (out / "round-1" / "sft" / "model.safetensors").read_bytes()
