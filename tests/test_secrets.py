"""API keys: a pasted trailing newline is stripped, a key a header cannot carry is refused
without being shown, and only keys long enough to be secret are redacted."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from test_openai_backend import Script, canned_server, completion

from cai.backends.base import SamplingParams
from cai.backends.openai import OpenAIBackend
from cai.cli.main import cli
from cai.data import read_rows
from cai.errors import UserInputError

SECRET = "sk-test-SECRET-0123456789abcdef"


def _generate(tmp_path, url, key):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    args = ["generate", "responses", "--prompts", str(prompts), "--backend", "openai", "--model", "m",
            "--max-new-tokens", "4", "--out", str(tmp_path / "out")]
    return CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": key, "OPENAI_BASE_URL": url})


@pytest.mark.parametrize("tail", ["\r", "\n", "\r\n", " \t\n"])
def test_key_with_trailing_line_break_is_stripped(tmp_path, tail):
    script = Script(lambda n, body, h: (200, completion("fine"), None, 0))
    with canned_server(script) as url:
        r = _generate(tmp_path, url, SECRET + tail)
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output
    assert {q["auth"] for q in script.requests} == {f"Bearer {SECRET}"}
    assert len(read_rows(tmp_path / "out")) == 2


@pytest.mark.parametrize("inside", ["\r\n", "\n", "\x07", "\u00e9"])
def test_key_a_header_cannot_carry_is_refused_without_showing_it(tmp_path, inside):
    script = Script(lambda n, body, h: (200, completion("fine"), None, 0))
    key = "sk-test-SECRET-0123" + inside + "456789abcdef"
    with canned_server(script) as url:
        r = _generate(tmp_path, url, key)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "$OPENAI_API_KEY" in lines[0], r.output
    assert "SECRET" not in r.output and "456789abcdef" not in r.output
    assert script.requests == []  # nothing was sent


def test_short_key_does_not_mangle_messages(monkeypatch):
    monkeypatch.setenv("CAI_TEST_SHORT_KEY", "x")
    msg = "This model's maximum context length is 8192 tokens"
    script = Script(lambda n, body, h: (400, {"error": {"message": msg}}, None, 0))
    with canned_server(script) as url:
        api = OpenAIBackend("m", base_url=url, api_key_env="CAI_TEST_SHORT_KEY", backoff=0.01, timeout=5)
        with pytest.raises(UserInputError) as e:
            api.generate([[{"role": "user", "content": "hi"}]], SamplingParams())
    assert msg in str(e.value) and "***" not in str(e.value)


def test_long_key_is_still_redacted(monkeypatch):
    monkeypatch.setenv("CAI_TEST_LONG_KEY", SECRET + "\n")
    script = Script(lambda n, body, h: (400, {"error": {"message": f"bad key {h.get('Authorization')}"}}, None, 0))
    with canned_server(script) as url:
        api = OpenAIBackend("m", base_url=url, api_key_env="CAI_TEST_LONG_KEY", backoff=0.01, timeout=5)
        with pytest.raises(UserInputError) as e:
            api.generate([[{"role": "user", "content": "hi"}]], SamplingParams())
    assert SECRET not in str(e.value) and "Bearer ***" in str(e.value)


def test_serve_strips_its_key_and_refuses_a_broken_one(monkeypatch):
    from fakes import ScriptedBackend

    from cai.serve import ChatServer

    monkeypatch.setenv("CAI_TEST_SERVE_KEY", SECRET + "\r\n")
    monkeypatch.setenv("CAI_TEST_CLIENT_KEY", SECRET)
    with ChatServer(ScriptedBackend(), api_key_env="CAI_TEST_SERVE_KEY") as server:
        api = OpenAIBackend("scripted", base_url=server.url, api_key_env="CAI_TEST_CLIENT_KEY", timeout=5)
        assert api.generate([[{"role": "user", "content": "hi"}]], SamplingParams())[0].text
    monkeypatch.setenv("CAI_TEST_SERVE_KEY", "sk-abc\ndef-0123456789")
    with pytest.raises(UserInputError) as e:
        ChatServer(ScriptedBackend(), api_key_env="CAI_TEST_SERVE_KEY")
    assert "line break" in str(e.value) and "def-0123456789" not in str(e.value)
