"""Constitution schema and its errors: each names the file, the line or field, and the fix."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner

from cai.cli.main import cli
from cai.constitution import load_constitution, parse_constitution, scaffold
from cai.errors import ConstitutionError

GOOD = """\
name: t
version: 1.0
principles:
  - id: a
    critique_request: c
    revision_request: r
    comparison_question: q
  - id: b
    critique_request: c2
    revision_request: r2
"""


def test_good_constitution_parses_and_hash_ignores_comments():
    c = parse_constitution(GOOD, "x.yaml")
    assert c.version == "1.0"  # a YAML float becomes the text the user wrote
    assert [p.id for p in c.principles] == ["a", "b"]
    c2 = parse_constitution("# a comment\n" + GOOD, "y.yaml")
    assert c.content_hash == c2.content_hash
    c3 = parse_constitution(GOOD.replace("c2", "c3"), "y.yaml")
    assert c3.content_hash != c.content_hash


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("    comparison_question: q\n", "    comparison_question: q\n    colour: red\n"),
         ["x.yaml:8", "principles.0.colour", "unknown key", "remove it"]),
        (GOOD.replace("    revision_request: r\n", ""), ["x.yaml:4", "principles.0.revision_request", "missing", "add it"]),
        (GOOD.replace("id: b", "id: a"), ["x.yaml:", "duplicate principle id 'a'"]),
        ("name: t\nversion: '1'\nprinciples: []\n", ["x.yaml:3", "principles", "empty"]),
        ("name: t\nversion: '1'\nprinciples:\n  - id: a\n   critique_request: [\n", ["x.yaml:", "malformed YAML"]),
        ("- just\n- a list\n", ["x.yaml", "mapping"]),
        (GOOD.replace("id: b", "id: 'has space'"), ["principles.1.id", "pattern"]),
        (GOOD + "few_shot:\n  - prompt: p\n    response: r\n    critique: c\n    revision: v\n    principle_id: zzz\n",
         ["few_shot.0.principle_id", "names no principle"]),
    ],
    ids=["unknown-key", "missing-field", "duplicate-id", "empty-principles", "bad-yaml", "not-mapping",
         "bad-id", "bad-few-shot-ref"],
)
def test_bad_constitutions_name_place_and_fix(text, expected):
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(text, "x.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, msg


def test_cli_validate_exit_code_2_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("    revision_request: r\n", ""))
    result = CliRunner().invoke(cli, ["constitution", "validate", str(bad)])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(bad) in lines[0]
    assert "Traceback" not in result.output


def test_cli_validate_show_and_new(tmp_path, tiny_constitution_path):
    r = CliRunner().invoke(cli, ["constitution", "validate", str(tiny_constitution_path)])
    assert r.exit_code == 0 and "3 principles" in r.output
    r = CliRunner().invoke(cli, ["constitution", "show", str(tiny_constitution_path)])
    assert r.exit_code == 0 and "harm" in r.output and "compare:" in r.output
    out = tmp_path / "mine.yaml"
    r = CliRunner().invoke(cli, ["constitution", "new", "mine", "--out", str(out)])
    assert r.exit_code == 0, r.output
    c = load_constitution(out)
    assert c.name == "mine" and c.principles
    r = CliRunner().invoke(cli, ["constitution", "new", "mine", "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output


def test_scaffold_validates():
    assert parse_constitution(scaffold("x"), "x.yaml").name == "x"


def test_unknown_constitution_name():
    with pytest.raises(ConstitutionError, match="no such file and no shipped constitution"):
        load_constitution("definitely-not-a-constitution")


def test_principle_sampling_weighted_seeded_unique(tiny_constitution_path):
    c = load_constitution(tiny_constitution_path)
    a = [p.id for p in c.sample_principles(200, random.Random(1))]
    b = [p.id for p in c.sample_principles(200, random.Random(1))]
    assert a == b
    # weights 3 : 1 : 0.5 -> 'harm' is drawn far more often than 'helpful'
    assert a.count("harm") > 2 * a.count("helpful")
    u = [p.id for p in c.sample_principles(5, random.Random(2), unique=True)]
    assert sorted(u) == ["harm", "helpful", "honesty"]


def test_refusals_may_list_wordings_picked_per_prompt_the_same_each_time():
    c = parse_constitution(GOOD + "refusals:\n  default: No.\n  weapons: [Not that., I won't., Sorry - no.]\n", "x.yaml")
    picks = {key: c.refusal_for("weapons", key) for key in (f"id-{i}" for i in range(40))}
    assert set(picks.values()) == {"Not that.", "I won't.", "Sorry - no."}  # spread over the wordings
    assert all(c.refusal_for("weapons", k) == v for k, v in picks.items())  # and stable per prompt
    assert c.refusal_for("drugs", "id-1") == c.refusal_for(None) == "No."
    assert c.all_refusals() == sorted(["No.", "Not that.", "I won't.", "Sorry - no."])


def test_an_empty_refusal_is_a_clear_error():
    with pytest.raises(ConstitutionError, match="refusals.weapons: an empty refusal"):
        parse_constitution(GOOD + "refusals:\n  weapons: ['ok', '  ']\n", "x.yaml")
    with pytest.raises(ConstitutionError, match="refusals.weapons"):
        parse_constitution(GOOD + "refusals:\n  weapons: []\n", "x.yaml")
