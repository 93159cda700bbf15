"""An --out directory cai did not make is never written into or cleaned; --overwrite
removes only what cai wrote; an unusable --out is one line, not a traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cai.cli.main import cli
from cai.data import CARD_FILE, DATA_FILE, META_FILE, DatasetWriter, read_meta, read_rows
from cai.errors import DataError

USER_README = "# My project\n\nMy own notes, not a dataset card.\n"
USER_DATA = '{"mine": true}\n'


def _responses(tmp_path, model_dir, out, *extra):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    args = ["generate", "responses", "--prompts", str(prompts), "--model", str(model_dir),
            "--max-new-tokens", "2", "--out", str(out), *extra]
    return CliRunner().invoke(cli, args)


def _one_line_exit_2(r):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    lines = [l for l in r.output.strip().splitlines() if not l.startswith("Loading weights")]  # model load bar
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


@pytest.mark.parametrize("overwrite", [False, True])
def test_user_directory_is_refused_and_left_untouched(tmp_path, tiny_model_dir, overwrite):
    out = tmp_path / "project"
    out.mkdir()
    (out / CARD_FILE).write_text(USER_README)
    (out / DATA_FILE).write_text(USER_DATA)
    r = _responses(tmp_path, tiny_model_dir, out, *(["--overwrite"] if overwrite else []))
    line = _one_line_exit_2(r)
    assert "not a cai dataset directory" in line and "README.md" in line
    assert (out / CARD_FILE).read_text() == USER_README
    assert (out / DATA_FILE).read_text() == USER_DATA
    assert sorted(p.name for p in out.iterdir()) == [CARD_FILE, DATA_FILE]


def test_empty_or_dotfile_only_directory_is_fine(tmp_path, tiny_model_dir):
    out = tmp_path / "empty"
    out.mkdir()
    (out / ".gitkeep").write_text("")
    r = _responses(tmp_path, tiny_model_dir, out)
    assert r.exit_code == 0, r.output
    assert len(read_rows(out)) == 2 and (out / ".gitkeep").exists()


def test_overwrite_removes_only_what_cai_wrote(tmp_path, tiny_model_dir):
    out = tmp_path / "ds"
    assert _responses(tmp_path, tiny_model_dir, out).exit_code == 0
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    (out / "mine" / DATA_FILE).write_text(USER_DATA)  # a folder of the user's, no cai marker
    r = _responses(tmp_path, tiny_model_dir, out, "--overwrite", "--temperature", "0.2")
    assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "mine" / DATA_FILE).read_text() == USER_DATA
    assert read_meta(out)["status"] == "complete" and "0.2" in json.dumps(read_meta(out)["fingerprint"])
    assert len(read_rows(out)) == 2


def test_users_readme_in_a_cai_directory_is_kept(tmp_path):
    d = tmp_path / "ds"
    w = DatasetWriter(d, kind="responses", fingerprint={"model": "m"})
    w.write([{"id": "1"}])
    w.finalize({})
    assert "cai" in (d / CARD_FILE).read_text()
    (d / CARD_FILE).write_text(USER_README)  # the user replaces the card with their own
    w = DatasetWriter(d, kind="responses", fingerprint={"model": "m"})
    w.finalize({})
    assert (d / CARD_FILE).read_text() == USER_README
    DatasetWriter(d, kind="responses", fingerprint={"model": "m"}, overwrite=True)
    assert (d / CARD_FILE).read_text() == USER_README  # --overwrite leaves it too
    assert read_rows(d) == []


def test_overwrite_cleans_cai_subdatasets(tmp_path):
    d = tmp_path / "ds"
    DatasetWriter(d, kind="sft", fingerprint={"model": "m"}).finalize({})
    for where in ("preference", ".cai/preference"):  # the view's place before and since the .cai/ layout
        sub = DatasetWriter(d / where, kind="preference", fingerprint={"model": "m"})
        sub.write([{"id": "1"}])
        sub.finalize({})
    DatasetWriter(d, kind="sft", fingerprint={"model": "m2"}, overwrite=True)
    assert not (d / "preference").exists() and not (d / ".cai/preference").exists()
    assert json.loads((d / META_FILE).read_text())["fingerprint"] == {"model": "m2"}


def test_out_under_a_file_is_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "afile").write_text("x")
    line = _one_line_exit_2(_responses(tmp_path, tiny_model_dir, tmp_path / "afile" / "out"))
    assert "cannot write a dataset there" in line and "afile" in line


def test_out_not_writable_is_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # a read-only parent (root ignores chmod)
    with pytest.raises(DataError, match=r"cannot write a dataset there \(Permission denied\); choose a writable"):
        DatasetWriter(tmp_path / "ro" / "out", kind="responses", fingerprint={})
