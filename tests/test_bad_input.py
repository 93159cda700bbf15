"""Bad input gives one line (file, line, what to do) and exit code 2, never a traceback:
prompt files that are not UTF-8 text, templates that reach for Python internals, and
YAML files with a key written twice."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from cai.cli.main import cli
from cai.data import load_prompts
from cai.errors import UserInputError
from cai.yamlfile import load_yaml_model


def _one_line_exit_2(r):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


def _responses(tmp_path, prompts, *extra):
    # The tiny default model is never loaded: every failure here comes first.
    return CliRunner().invoke(cli, ["generate", "responses", "--prompts", str(prompts), "--model", "./no-model",
                                    "--out", str(tmp_path / "out"), *extra])


# --- prompt files ---------------------------------------------------------------------------

LATIN1 = "caf\u00e9 au lait\n".encode("latin-1")
BAD_FILES = {
    "p.jsonl": b'{"prompt": "ok"}\n{"prompt": "' + LATIN1.rstrip() + b'"}\n',
    "p.txt": b"fine\n" + LATIN1,
    "p.csv": b"prompt\nfine\n" + LATIN1,
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_non_utf8_prompt_file_is_one_line_with_file_and_line(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(BAD_FILES[name])
    line = _one_line_exit_2(_responses(tmp_path, f))
    assert f"{f}:" in line and "not UTF-8" in line and "save the file as UTF-8" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["p.jsonl", "p.txt", "p.csv"])
def test_binary_prompt_file_is_one_line(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10")
    line = _one_line_exit_2(_responses(tmp_path, f))
    assert str(f) in line and ("binary" in line or "UTF-8" in line)


def test_utf16_prompt_file_says_so(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes("hello\n".encode("utf-16"))
    line = _one_line_exit_2(_responses(tmp_path, f))
    assert "UTF-16" in line and "UTF-8" in line


def test_utf8_bom_is_accepted_in_every_format(tmp_path):
    bom = b"\xef\xbb\xbf"
    files = {
        "p.jsonl": bom + json.dumps({"prompt": "caf\u00e9"}).encode() + b"\n",
        "p.txt": bom + "caf\u00e9\n".encode(),
        "p.csv": bom + "prompt,category\ncaf\u00e9,x\n".encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        recs = load_prompts(tmp_path / name)
        assert [r.text for r in recs] == ["caf\u00e9"], name
    assert load_prompts(tmp_path / "p.csv")[0].extra == {"category": "x"}


def test_csv_line_numbers_still_name_the_row(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text('prompt\n"multi\nline"\n\n')
    assert [r.text for r in load_prompts(f)] == ["multi\nline"]
    f.write_text("prompt\nok\n   \n")
    with pytest.raises(UserInputError, match=r"p.csv:3: no 'prompt'"):
        load_prompts(f)


# --- templates that reach for Python internals --------------------------------------------

INTERNALS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ prompt.upper.__globals__ }}",
    "{{ prompt._secret }}",
    "{{ prompt['__class__'] }}",
    "{{ prompt | attr('__class__') }}",
    "{% set n = '__' ~ 'class__' %}{{ prompt | attr(n) }}",
    "{{ '{0.__class__}'.format(prompt) }}",
    "{% for x in prompt.__class__.__subclasses__() %}{{ x }}{% endfor %}",
]


@pytest.mark.parametrize("text", INTERNALS)
def test_prompts_lint_refuses_python_internals(tmp_path, text):
    (tmp_path / "initial_response.jinja").write_text("Q: {{ prompt }}\n" + text + "\n")
    r = CliRunner().invoke(cli, ["prompts", "lint", "--template-dir", str(tmp_path)])
    assert r.exit_code == 1, r.output
    assert f"{tmp_path / 'initial_response.jinja'}:2:" in r.output
    assert "Python internals" in r.output or "computed name" in r.output
    assert "templates ok" not in r.output


@pytest.mark.parametrize("text", INTERNALS[:3])
def test_run_refuses_python_internals_before_the_model_loads(tmp_path, text):
    (tmp_path / "initial_response.jinja").write_text(text)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    line = _one_line_exit_2(_responses(tmp_path, prompts, "--template-dir", str(tmp_path)))
    assert "Python internals" in line and "no-model" not in line  # not the missing model: earlier
    assert not (tmp_path / "out").exists()


def test_plain_fields_and_filters_pass_lint(tmp_path):
    (tmp_path / "critique.jinja").write_text(
        "{% for ex in few_shot %}{{ ex.prompt | trim }} {{ ex['response'] }}{% endfor %}\n"
        "{{ principle.critique_request }} {{ '{} and {}'.format(prompt, response) }} {{ constitution.name }}\n")
    r = CliRunner().invoke(cli, ["prompts", "lint", "--template-dir", str(tmp_path)])
    assert r.exit_code == 0 and "templates ok" in r.output, r.output


# --- duplicate YAML keys ----------------------------------------------------------------------

CONSTITUTION = """\
name: dup
version: "1"
principles:
  - id: p1
    critique_request: Find problems.
    revision_request: Fix them.
    critique_request: Find other problems.
"""


def test_duplicate_key_in_constitution_names_both_lines(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(CONSTITUTION)
    line = _one_line_exit_2(CliRunner().invoke(cli, ["constitution", "validate", str(f)]))
    assert f"{f}:7:" in line and "duplicate key 'critique_request'" in line and "line 5" in line


def test_duplicate_top_level_key_and_json(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(CONSTITUTION.replace('version: "1"', 'version: "1"\nname: again'))
    line = _one_line_exit_2(CliRunner().invoke(cli, ["constitution", "validate", str(f)]))
    assert f"{f}:3:" in line and "duplicate key 'name'" in line and "line 1" in line
    j = tmp_path / "c.json"
    j.write_text('{"name": "a",\n "version": "1",\n "name": "b",\n "principles": []}')
    line = _one_line_exit_2(CliRunner().invoke(cli, ["constitution", "validate", str(j)]))
    assert f"{j}:3:" in line and "line 1" in line


class _Config(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


def test_duplicate_key_in_a_config_yaml(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("name: a\nsft:\n  learning_rate: 1.0e-5\n  max_steps: 10\n  learning_rate: 1.0e-3\n")
    with pytest.raises(UserInputError, match=r"run.yaml:5: duplicate key 'learning_rate' \(first at line 3\)"):
        load_yaml_model(f, _Config)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("name: a\nbase: &b {lr: 1, steps: 2}\nsft:\n  <<: *b\n  lr: 3\n")
    cfg = load_yaml_model(f, _Config)
    assert cfg.model_extra["sft"] == {"lr": 3, "steps": 2}


def test_two_different_prompts_under_one_id_name_both_lines(tmp_path):
    import json

    from cai.data import load_prompts
    from cai.errors import DataError

    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "First question?"}, {"id": "b", "prompt": "Second?"},
        {"id": "a", "prompt": "First question?"},        # the same prompt again: one prompt
        {"id": "a", "prompt": "A different question?"},  # another prompt, same id: refused
    ]) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl: line 1 and line 4 share id 'a' but hold different prompts"):
        load_prompts(p)
    p.write_text("\n".join(json.dumps(r) for r in [{"id": "a", "prompt": "Q?"}, {"id": "a", "prompt": "Q?"}]) + "\n")
    assert len(load_prompts(p)) == 1


def test_duplicate_ids_exit_2_from_the_cli(tmp_path):
    import json

    from click.testing import CliRunner

    from cai.cli.main import cli

    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "x", "prompt": "One?"}) + "\n" + json.dumps({"id": "x", "prompt": "Two?"}) + "\n")
    r = CliRunner().invoke(cli, ["generate", "responses", "-p", str(p), "--out", str(tmp_path / "out"),
                                 "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "line 1 and line 2 share id 'x'" in r.output, r.output
