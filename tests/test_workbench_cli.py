"""`cai constitution try | diff | lint --model` on the scripted backend, and bad input: one line, exit 2,
before any model loads."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fakes import ScriptedBackend
from test_workbench import prefers_revision, respond

import cai.cli.options as cli_options
from cai.cli.main import cli


@pytest.fixture
def scripted(monkeypatch):
    """Every model the CLI would load is a scripted backend; `built` counts how many were built."""
    built: list[ScriptedBackend] = []

    def make(*args, **kwargs):
        b = ScriptedBackend(respond, prefers_revision, model_id=args[0] if args else "scripted")
        built.append(b)
        return b

    monkeypatch.setattr(cli_options, "make_backend_from_options", make)
    return built


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("bad input must be reported before any model loads")

    monkeypatch.setattr(cli_options, "make_backend_from_options", refuse)


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_exit_2(r) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


@pytest.fixture
def prompt_file(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"question number {i} about bread?"}) + "\n" for i in range(3)),
                 encoding="utf-8")
    return f


def test_try_writes_the_page_and_the_document_and_reruns_from_the_cache(tmp_path, tiny_constitution_path,
                                                                        prompt_file, scripted):
    out = tmp_path / "W"
    r = _invoke("constitution", "try", tiny_constitution_path, "-p", prompt_file, "--principles", "harm,honesty",
                "--out", out)
    assert r.exit_code == 0, r.output
    assert "tiny v1.0 on 3 prompts x 2 principles" in r.output and "better .80" in r.output
    assert "principle" in r.output and "P1" in r.output and "health:" in r.output
    assert (out / "workbench.html").is_file() and (out / "cache" / "cell").is_dir()
    doc = json.loads((out / "workbench.json").read_text(encoding="utf-8"))
    assert doc["command"] is None  # run from Python, not as `cai`
    assert len(doc["cells"]) == 6 and not any(c["cached"] for c in doc["cells"])
    assert len(scripted) == 1
    # Rerun: every cell from the cache and no model built.
    r = _invoke("constitution", "try", tiny_constitution_path, "-p", prompt_file, "--principles", "harm,honesty",
                "--out", out)
    assert r.exit_code == 0, r.output
    assert "6 cells (6 from the cache, 0 computed)" in r.output and len(scripted) == 1
    doc = json.loads((out / "workbench.json").read_text(encoding="utf-8"))
    assert all(c["cached"] for c in doc["cells"]) and doc["timing"]["model_load_s"] == 0


def test_try_rerun_with_one_principle_edited(tmp_path, tiny_constitution_path, prompt_file, scripted):
    edited = tmp_path / "tiny2.yaml"
    text = tiny_constitution_path.read_text(encoding="utf-8")
    edited.write_text(text.replace("Point out anything dishonest in the response.",
                                   "Point out anything untrue in the response."), encoding="utf-8")
    out = tmp_path / "W"
    assert _invoke("constitution", "try", tiny_constitution_path, "-p", prompt_file, "--out", out).exit_code == 0
    r = _invoke("constitution", "try", edited, "-p", prompt_file, "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "workbench.json").read_text(encoding="utf-8"))
    assert {c["principle_id"] for c in doc["cells"] if not c["cached"]} == {"honesty"}
    assert "9 cells (6 from the cache, 3 computed)" in r.output


def test_try_with_prompt_flags_and_sampled_principles(tmp_path, scripted):
    r = _invoke("constitution", "try", "harmless", "--prompt", "How do I bake bread?", "--prompt", "Tell a joke.",
                "--principles", "2", "--cache", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert "on 2 prompts x 2 principles" in r.output and not (tmp_path / "workbench.json").exists()
    assert (tmp_path / "c" / "initial").is_dir()


def test_diff_text_only_and_with_prompts(tmp_path, tiny_constitution_path, prompt_file, scripted):
    b = tmp_path / "tiny-v2.yaml"
    b.write_text(tiny_constitution_path.read_text(encoding="utf-8")
                 .replace('version: "1.0"', 'version: "1.1"')
                 .replace("Rewrite the response to be honest.", "Rewrite the response so that it is honest."),
                 encoding="utf-8")
    r = _invoke("constitution", "diff", tiny_constitution_path, b)
    assert r.exit_code == 0, r.output
    assert "changed  honesty" in r.output and "{+so that it is+}" in r.output and not scripted
    assert "unchanged: harm, helpful" in r.output
    out = tmp_path / "W"
    r = _invoke("constitution", "diff", tiny_constitution_path, b, "-p", prompt_file, "--out", out)
    assert r.exit_code == 0, r.output
    assert "figures (A -> B):" in r.output and "from 20 prompts on" in r.output
    doc = json.loads((out / "diff.json").read_text(encoding="utf-8"))
    assert doc["kind"] == "diff" and doc["principle_ids"] == ["honesty"]
    assert [p["b"]["cached"] for p in doc["pairs"]] == [False] * 3
    assert (out / "diff.html").is_file()
    r = _invoke("constitution", "diff", tiny_constitution_path, tiny_constitution_path, "-p", prompt_file)
    assert r.exit_code == 0 and "no differences" in r.output and "nothing to run" in r.output


def test_lint_with_a_model_reports_unhealthy_principles(tmp_path, tiny_constitution_path, monkeypatch):
    monkeypatch.setattr(cli_options, "make_backend_from_options",
                        lambda *a, **k: ScriptedBackend(respond, lambda c, o: [0.7, 0.3]))
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("cai.lint.lint_constitution", lambda *a, **k: [])  # the embedding check is tested elsewhere
    r = _invoke("constitution", "lint", tiny_constitution_path, "--model", "scripted", "--prompt", "Bake bread?",
                "--principles", "harm")
    assert r.exit_code == 1, r.output
    assert f"{tiny_constitution_path}: principle 'harm': the judge cannot tell" in r.output
    assert "1 problem(s)" in r.output


BAD = {
    "unknown principle id": (["--principles", "harm,nope"], "no principle 'nope'"),
    "zero principles": (["--principles", "0"], "positive number"),
    "too many principles": (["--principles", "7"], "has 3 principles"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_try_bad_principles(case, tiny_constitution_path, prompt_file, no_model):
    args, expected = BAD[case]
    line = _one_line_exit_2(_invoke("constitution", "try", tiny_constitution_path, "-p", prompt_file, *args))
    assert expected in line


def test_try_bad_prompts_and_constitutions(tmp_path, tiny_constitution_path, no_model):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert "no prompts found" in _one_line_exit_2(_invoke("constitution", "try", tiny_constitution_path, "-p", empty))
    assert "not found" in _one_line_exit_2(_invoke("constitution", "try", tiny_constitution_path, "-p",
                                                   tmp_path / "nope.jsonl"))
    assert "no prompts" in _one_line_exit_2(_invoke("constitution", "try", tiny_constitution_path))
    assert "empty" in _one_line_exit_2(_invoke("constitution", "try", tiny_constitution_path, "--prompt", " "))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: 1\nprinciples: []\n", encoding="utf-8")
    assert "principle list is empty" in _one_line_exit_2(_invoke("constitution", "try", bad, "--prompt", "hi"))
    assert "no shipped constitution" in _one_line_exit_2(_invoke("constitution", "try", tmp_path / "x.yaml",
                                                                 "--prompt", "hi"))
    f = tmp_path / "file"
    f.write_text("x", encoding="utf-8")
    assert "--out is a file" in _one_line_exit_2(_invoke("constitution", "try", tiny_constitution_path,
                                                         "--prompt", "hi", "--out", f))
    tdir = tmp_path / "t"
    tdir.mkdir()
    (tdir / "critique.jinja").write_text("{{ prompt }} {{ nope }}", encoding="utf-8")
    assert "undefined variable 'nope'" in _one_line_exit_2(_invoke("constitution", "try", tiny_constitution_path,
                                                                   "--prompt", "hi", "--template-dir", tdir))


def test_diff_and_lint_bad_input(tmp_path, tiny_constitution_path, prompt_file, no_model):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: 1\nprinciples: []\n", encoding="utf-8")
    assert "principle list is empty" in _one_line_exit_2(_invoke("constitution", "diff", tiny_constitution_path, bad,
                                                                 "-p", prompt_file))
    assert "neither" in _one_line_exit_2(_invoke("constitution", "diff", tiny_constitution_path,
                                                 tiny_constitution_path, "--principles", "nope", "-p", prompt_file))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert "no prompts found" in _one_line_exit_2(_invoke("constitution", "diff", tiny_constitution_path,
                                                          tiny_constitution_path, "-p", empty))
    assert "no principle 'nope'" in _one_line_exit_2(_invoke("constitution", "lint", tiny_constitution_path,
                                                             "--model", "x", "--principles", "nope"))
    assert "no prompts found" in _one_line_exit_2(_invoke("constitution", "lint", tiny_constitution_path,
                                                          "--model", "x", "-p", empty))
    assert "only make sense with --model" in _one_line_exit_2(_invoke("constitution", "lint", tiny_constitution_path,
                                                                      "-p", prompt_file))
