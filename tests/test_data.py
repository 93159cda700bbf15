"""Prompt-set loading and the resumable dataset writer."""

from __future__ import annotations

import json

import pytest

from cai.data import DatasetWriter, load_prompts, read_meta, read_rows, to_hf_dataset
from cai.errors import DataError


def test_load_jsonl_prompt_and_messages(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"prompt": "hello", "category": "x"}) + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                   {"role": "user", "content": "again"}]}) + "\n"
        + json.dumps({"prompt": "hello"}) + "\n"  # duplicate: same id, kept once
    )
    recs = load_prompts(f)
    assert [r.text for r in recs] == ["hello", "again"]
    assert recs[0].extra == {"category": "x"}
    assert len(recs[1].messages) == 3
    assert recs[0].id == load_prompts(f)[0].id  # deterministic ids


def test_malformed_jsonl_line_reports_line_number(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: not valid JSON"):
        load_prompts(f)
    f.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: no 'prompt'"):
        load_prompts(f)
    f.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    with pytest.raises(DataError, match=r"p.jsonl:1: 'messages' must"):
        load_prompts(f)


def test_load_csv_txt_and_limit(tmp_path):
    c = tmp_path / "p.csv"
    c.write_text("prompt,category\none,a\n\"two, with comma\",b\n")
    assert [r.text for r in load_prompts(c)] == ["one", "two, with comma"]
    bad = tmp_path / "bad.csv"
    bad.write_text("question\nx\n")
    with pytest.raises(DataError, match="bad.csv:1: CSV needs a 'prompt' column"):
        load_prompts(bad)
    t = tmp_path / "p.txt"
    t.write_text("a\n\nb\nc\n")
    assert [r.text for r in load_prompts(t, limit=2)] == ["a", "b"]
    with pytest.raises(DataError, match="unknown prompt file type"):
        (tmp_path / "p.xml").write_text("x")
        load_prompts(tmp_path / "p.xml")
    with pytest.raises(DataError, match="empty"):
        (tmp_path / "e.txt").write_text("\n")
        load_prompts(tmp_path / "e.txt")


def test_load_saved_hf_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["x", "y"]}).save_to_disk(str(tmp_path / "ds"))
    assert [r.text for r in load_prompts(tmp_path / "ds")] == ["x", "y"]
    with pytest.raises(DataError, match="not a saved Hugging Face dataset"):
        (tmp_path / "empty").mkdir()
        load_prompts(tmp_path / "empty")


def test_writer_resumes_and_repairs_torn_line(tmp_path):
    fp = {"model": "m", "templates": {"a": "1"}}
    w = DatasetWriter(tmp_path / "d", kind="responses", fingerprint=fp)
    w.write([{"id": "1", "x": 1}, {"id": "2", "x": 2}])
    w.write_failures([{"id": "3", "reason": "empty", "raw": ""}])
    with open(tmp_path / "d" / "data.jsonl", "a") as f:
        f.write('{"id": "4", "x"')  # a kill mid-write
    w2 = DatasetWriter(tmp_path / "d", kind="responses", fingerprint=fp)
    assert w2.done_ids == {"1", "2"} and w2.is_done("3") and not w2.is_done("4")
    w2.write([{"id": "2", "x": 2}, {"id": "4", "x": 4}])  # 2 is a duplicate: dropped
    assert [r["id"] for r in read_rows(tmp_path / "d")] == ["1", "2", "4"]
    w2.finalize({"note": "done"})
    meta = read_meta(tmp_path / "d")
    assert meta["status"] == "complete" and meta["counts"] == {"rows": 3, "failed": 1}
    card = (tmp_path / "d" / "README.md").read_text()
    assert "data_files: data.jsonl" in card and '"model": "m"' in card
    assert len(to_hf_dataset(tmp_path / "d")) == 3


def test_writer_refuses_other_settings(tmp_path):
    DatasetWriter(tmp_path / "d", kind="responses", fingerprint={"model": "m"})
    with pytest.raises(DataError, match="model differ"):
        DatasetWriter(tmp_path / "d", kind="responses", fingerprint={"model": "other"})
    w = DatasetWriter(tmp_path / "d", kind="responses", fingerprint={"model": "other"}, overwrite=True)
    assert w.done_ids == set()


def test_a_corrupt_line_in_the_middle_is_quarantined_on_resume_and_its_row_made_again(tmp_path, caplog):
    import json

    from cai.data import QUARANTINE_FILE, DatasetWriter, read_jsonl

    fp = {"stage": "t"}
    w = DatasetWriter(tmp_path / "d", kind="sft", fingerprint=fp)
    w.write([{"id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(4)])
    w.finalize({}, title="t")
    lines = (tmp_path / "d" / "data.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # half a line, in the middle of the file
    (tmp_path / "d" / "data.jsonl").write_text("".join(lines))
    w = DatasetWriter(tmp_path / "d", kind="sft", fingerprint=fp)
    assert w.done_ids == {"r0", "r2", "r3"} and not w.is_done("r1")  # r1 is made again
    quarantined = list(read_jsonl(tmp_path / "d" / QUARANTINE_FILE))
    assert [q["line"] for q in quarantined] == [2] and quarantined[0]["text"] == lines[1].rstrip("\n")
    assert "1 corrupt line(s) moved" in caplog.text
    assert all(json.loads(line) for line in (tmp_path / "d" / "data.jsonl").read_text().splitlines())
    import datasets

    assert datasets.load_dataset(str(tmp_path / "d"), split="train").num_rows == 3
