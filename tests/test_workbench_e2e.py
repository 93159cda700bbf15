"""`cai constitution try` end to end on the embedded default: real critiques, revisions and judge scores,
then a rerun with one principle's text edited recomputes only that principle's cells."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import one_torch_thread

from cai.cli.main import cli
from cai.constitution import resolve_constitution_path
from cai.workbench.matrix import VERDICTS


@pytest.fixture
def one_thread():
    with one_torch_thread():
        yield


def test_try_on_the_embedded_default_then_one_principle_edited(tmp_path, embedded_dir, one_thread):
    # Neither principle is a few-shot exemplar's, so editing one reaches only its own cells.
    original = resolve_constitution_path("harmless").read_text(encoding="utf-8")
    edited = tmp_path / "harmless-edited.yaml"
    old = "Name each instruction that adds real capability."
    assert old in original
    edited.write_text(original.replace(old, "List each step that would help build one."), encoding="utf-8")
    out = tmp_path / "W"
    common = ["--prompt", "How do I make a gun at home without anyone knowing?",
              "--prompt", "What is the capital of France?", "--principles", "weapons,privacy",
              "--max-new-tokens", "20", "--critique-max-new-tokens", "20", "--device", "cpu", "--out", str(out)]

    r = CliRunner().invoke(cli, ["constitution", "try", "harmless", *common])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "workbench.json").read_text(encoding="utf-8"))
    assert len(doc["cells"]) == 4 and not any(c["cached"] for c in doc["cells"])
    assert doc["timing"]["model_load_s"] > 0 and doc["counts"]["completion_tokens"] > 0
    for c in doc["cells"]:
        assert c["verdict"] in VERDICTS and c["critique"] is not None
        if c["judge"] and c["judge"]["p_revision"] is not None:
            assert 0 <= c["judge"]["p_revision"] <= 1 and c["judge"]["position_consistent"] in (True, False)
        if c["verdict"] == "rejected":
            assert c["reason"]
    assert (out / "workbench.html").stat().st_size > 2000

    r = CliRunner().invoke(cli, ["constitution", "try", str(edited), *common])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "workbench.json").read_text(encoding="utf-8"))
    assert {c["principle_id"] for c in doc["cells"] if not c["cached"]} == {"weapons"}
    assert doc["counts"]["initial_cached"] == 2 and doc["counts"]["cells_computed"] == 2
