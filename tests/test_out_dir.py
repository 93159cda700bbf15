"""`--out` that is not cai's is refused while the flags are read, before any model loads.

Every `cai generate ...` command and `cai run` are given a model path that does not
exist, and loading any model fails the test outright: the refusal must come first, and
leave the user's directory as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_rounds import write_config

from cai.cli.main import cli


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr("cai.backends.make_backend", refuse)


@pytest.fixture
def theirs(tmp_path: Path) -> Path:
    """A directory of the user's: their README.md and notes, no cai marker."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "README.md").write_text("my notes\n")
    (d / "data.jsonl").write_text('{"mine": 1}\n')
    return d


def _inputs(tmp_path: Path) -> dict[str, str]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    distilled = tmp_path / "distilled"
    distilled.mkdir()
    return {"prompts": str(prompts), "questions": str(questions), "distill": str(distilled),
            "model": str(tmp_path / "no-such-model")}


def _commands(i: dict[str, str], out: str) -> dict[str, list[str]]:
    m = ["--model", i["model"]]
    return {
        "responses": ["generate", "responses", "-p", i["prompts"], *m, "--out", out],
        "revisions": ["generate", "revisions", "-p", i["prompts"], *m, "--out", out],
        "preferences": ["generate", "preferences", "-p", i["prompts"], "-c", "harmless", *m, "--out", out],
        "distill": ["generate", "distill", "--red-team", i["prompts"], "--helpful", i["prompts"], *m, "--out", out],
        "cot": ["generate", "cot", "-q", i["questions"], *m, "--out", out],
        "prompts": ["generate", "prompts", "--seeds", i["prompts"], "--kind", "helpful", "--n", "2", *m,
                    "--out", out],
        "contrastive": ["generate", "contrastive", "--distill", i["distill"], "--out", out],
    }


@pytest.mark.parametrize("command", ["responses", "revisions", "preferences", "distill", "cot", "prompts",
                                     "contrastive"])
def test_generate_refuses_a_directory_cai_did_not_make_before_any_model_loads(command, tmp_path, theirs,
                                                                              no_model_loads):
    before = sorted(p.name for p in theirs.iterdir())
    r = CliRunner().invoke(cli, _commands(_inputs(tmp_path), str(theirs))[command])
    assert r.exit_code == 2, r.output
    assert "not empty and not a cai dataset directory (it holds README.md, data.jsonl)" in r.output
    assert "Traceback" not in r.output and "no-such-model" not in r.output
    assert sorted(p.name for p in theirs.iterdir()) == before  # not even .cai/
    assert (theirs / "README.md").read_text() == "my notes\n"


def test_generate_goes_on_into_a_cai_dataset_directory(tmp_path, no_model_loads):
    # cai's own directory passes the check (a resume): the command gets as far as the model.
    out = tmp_path / "ours"
    (out / ".cai").mkdir(parents=True)
    (out / ".cai/cai_dataset.json").write_text(json.dumps({"kind": "responses"}))
    (out / "data.jsonl").write_text("")
    r = CliRunner().invoke(cli, _commands(_inputs(tmp_path), str(out))["responses"])
    assert isinstance(r.exception, AssertionError) and "model was loaded" in str(r.exception)


def test_out_that_is_a_file_is_refused_before_any_model_loads(tmp_path, no_model_loads):
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = CliRunner().invoke(cli, _commands(_inputs(tmp_path), str(f))["revisions"])
    assert r.exit_code == 2 and "is a file" in r.output and "no-such-model" not in r.output


def test_cai_run_refuses_a_directory_cai_did_not_make_before_any_model_loads(tmp_path, theirs, no_model_loads):
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "no-such-model", rounds=1)
    for extra in ([], ["--resume"]):
        r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(theirs), "--no-report", *extra])
        assert r.exit_code == 2, r.output
        assert "not empty and not a cai run directory (it holds README.md, data.jsonl)" in r.output
        assert sorted(p.name for p in theirs.iterdir()) == ["README.md", "data.jsonl"]


def test_cai_run_resumes_into_its_own_directory(tmp_path, no_model_loads):
    # A run directory (manifest.json) passes the check: --resume gets as far as the model.
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "no-such-model", rounds=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"stages": {}}))
    (run_dir / "config.yaml").write_text("name: tiny\n")
    r = CliRunner().invoke(cli, ["run", str(cfg), "--out", str(run_dir), "--resume", "--no-report"])
    assert isinstance(r.exception, AssertionError) and "model was loaded" in str(r.exception)
