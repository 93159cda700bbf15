"""The OpenAI-compatible backend against real HTTP servers on loopback.

`cai serve` (cai.serve.ChatServer) over the tiny transformers model and over a
scripted backend; small stdlib servers for 429/5xx/timeouts/concurrency.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fakes import ScriptedBackend

from cai.backends import make_backend
from cai.backends.base import SamplingParams, provenance
from cai.backends.openai import BackendRequestError, OpenAIBackend, choice_failure, option_key
from cai.errors import UserInputError
from cai.serve import ChatServer, top_logprobs

SECRET = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "CAI_TEST_OPENAI_KEY"


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return KEY_ENV


# --- a canned OpenAI-compatible server whose behaviour each test scripts ------------


def completion(text: str = "ok", finish: str = "stop") -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


class Script:
    """What the canned server does: ``reply(n, body, headers) -> (status, payload, headers, delay)``."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0


@contextmanager
def canned_server(script: Script):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                n = len(script.requests)
                script.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                script.inflight += 1
                script.max_inflight = max(script.max_inflight, script.inflight)
            done = False
            try:
                status, payload, headers, delay = script.reply(n, body, dict(self.headers))
                if delay:
                    time.sleep(delay)
                data = json.dumps(payload).encode()
                # Out of flight before the client can read the answer: decremented after it, the
                # client's next request could be counted first (a flaky 4 of 3 in the limit test).
                with script.lock:
                    script.inflight -= 1
                done = True
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left
            finally:
                if not done:
                    with script.lock:
                        script.inflight -= 1

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def client(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5)
    return OpenAIBackend("m", base_url=url, **kw)


USER = [{"role": "user", "content": "hi"}]


# --- against `cai serve` over real backends -----------------------------------------


def test_generate_through_cai_serve_keeps_order_and_batches(key_env):
    backend = ScriptedBackend(respond=lambda conv: "echo " + conv[-1]["content"])
    with ChatServer(backend, model_name="scripted", api_key_env=key_env, batch_wait_s=0.05) as server:
        api = OpenAIBackend("scripted", base_url=server.url, api_key_env=key_env, concurrency=4)
        convs = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
        gens = api.generate(convs, SamplingParams(max_new_tokens=8, temperature=0))
    assert [g.text for g in gens] == [f"echo q{i}" for i in range(10)]
    assert all(g.prompt_tokens == backend.count_tokens(c) for g, c in zip(gens, convs))
    # Concurrent requests were gathered into fewer backend calls than requests.
    assert sum(len(c) for c in backend.generate_calls) == 10
    assert len(backend.generate_calls) < 10


class TopTokenBackend(ScriptedBackend):
    """A scripted backend that also reports next-token log-probs, like a real model would."""

    def __init__(self, top):
        super().__init__()
        self.top = top

    def top_logprobs(self, conversations, k):
        return [self.top[:k] for _ in conversations]


def test_choice_logprobs_maps_token_variants_and_fails_missing_options():
    top = [(" A", math.log(0.5)), ("(B", math.log(0.2)), ("A", math.log(0.1)), ("x", math.log(0.05))]
    with ChatServer(TopTokenBackend(top)) as server:
        api = OpenAIBackend("scripted", base_url=server.url, top_logprobs=4)
        scores = api.choice_logprobs([USER, USER], ["(A)", "B"])
        [missing] = api.choice_logprobs([USER], ["(A)", "B", "C"])
    assert len(scores) == 2
    s = scores[0]
    # "A" is spelled by " A" and "A" (0.6 together).
    raw = [math.log(0.6), math.log(0.2)]
    z = math.log(sum(math.exp(r) for r in raw))
    assert s.logprobs == pytest.approx([r - z for r in raw], abs=1e-9)
    assert s.extra["scoring"] == "continue_final" and choice_failure(s) is None
    # "C" is absent from the top tokens: the row fails with the reason, no floor value.
    assert all(math.isnan(x) for x in missing.logprobs)
    assert missing.extra["error_kind"] == "option_missing" and missing.extra["missing"] == ["C"]
    assert "'C' not among the server's top 4" in choice_failure(missing)


def test_choice_logprobs_with_tiny_transformers_model(tiny_backend):
    conv = [{"role": "user", "content": "Which is better, (A) or (B)?"}, {"role": "assistant", "content": "("}]
    direct = top_logprobs(tiny_backend, [conv], 20)[0]
    options = []
    for tok, _ in direct:  # two real top tokens that stay distinct once normalised
        if option_key(tok) and option_key(tok) not in {option_key(o) for o in options}:
            options.append(tok)
        if len(options) == 2:
            break
    with ChatServer(tiny_backend, model_name="tiny") as server:
        api = OpenAIBackend("tiny", base_url=server.url)
        [s] = api.choice_logprobs([conv], options)
        [failed] = api.choice_logprobs([conv], options + ["zz-not-a-top-token"])
        [gen] = api.generate([conv], SamplingParams(max_new_tokens=4, temperature=0))
    expected = [max(v for t, v in direct if option_key(t) == option_key(o)) for o in options]
    got = s.extra["raw_logprobs"]
    # Several top tokens may share a key; the client adds them, so it is at least the best one.
    assert all(g >= e - 1e-4 for g, e in zip(got, expected))
    assert math.isclose(sum(math.exp(x) for x in s.logprobs), 1.0, rel_tol=1e-6)
    assert failed.extra["missing"] == ["zz-not-a-top-token"] and all(math.isnan(x) for x in failed.logprobs)
    assert gen.prompt_tokens == tiny_backend.count_tokens(conv)
    assert gen.finish_reason in {"stop", "length"} and gen.completion_tokens <= 4


def test_server_models_endpoint_and_bad_requests(key_env):
    with ChatServer(ScriptedBackend(), model_name="scripted", api_key_env=key_env) as server:
        req = urllib.request.Request(server.url + "/models", headers={"Authorization": f"Bearer {SECRET}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            models = json.loads(r.read())
        assert models["data"][0]["id"] == "scripted" and models["data"][0]["max_model_len"] == 4096
        good = OpenAIBackend("scripted", base_url=server.url, api_key_env=key_env)
        with pytest.raises(UserInputError, match="logprobs"):  # scripted backend has no logprobs: a 400
            good.choice_logprobs([USER], ["A", "B"])
        os.environ[key_env] = "sk-wrong-key-abcdef"
        wrong = OpenAIBackend("scripted", base_url=server.url, api_key_env=key_env)
        with pytest.raises(UserInputError, match=f"\\${key_env}") as e:
            wrong.generate([USER], SamplingParams(max_new_tokens=4))
        assert "sk-wrong-key-abcdef" not in str(e.value)


def test_cai_serve_cli_serves_tiny_model(tiny_model_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cai.cli.main", "serve", "--model", str(tiny_model_dir), "--device", "cpu",
         "--port", "0", "--served-model-name", "tiny"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        url = re.search(r"(http://\S+/v1)", line).group(1)
        api = OpenAIBackend("tiny", base_url=url)
        [gen] = api.generate([USER], SamplingParams(max_new_tokens=3, temperature=0))
        assert gen.completion_tokens >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# --- retries, timeouts, concurrency, secrecy ----------------------------------------


def test_retries_429_honouring_retry_after():
    script = Script(lambda n, body, h: (429, {"error": {"message": "slow down"}}, {"Retry-After": "0.2"}, 0)
                    if n < 2 else (200, completion("fine"), None, 0))
    with canned_server(script) as url:
        api = client(url)
        t0 = time.monotonic()
        [gen] = api.generate([USER], SamplingParams(max_new_tokens=4))
        elapsed = time.monotonic() - t0
    assert gen.text == "fine"
    assert len(script.requests) == 3 and api.retries == 2
    assert elapsed >= 0.4  # two waits of Retry-After, not the 0.01 s backoff


def test_5xx_retried_then_gives_up_with_clear_error():
    script = Script(lambda n, body, h: (503, {"error": {"message": "overloaded"}}, None, 0))
    with canned_server(script) as url:
        with pytest.raises(BackendRequestError, match="failed 3 times; last error: HTTP 503 overloaded"):
            client(url, max_retries=2).generate([USER], SamplingParams())
    assert len(script.requests) == 3


def test_500_then_success_and_4xx_not_retried():
    script = Script(lambda n, body, h: (500, {}, None, 0) if n == 0 else (200, completion("ok", "length"), None, 0))
    with canned_server(script) as url:
        [gen] = client(url).generate([USER], SamplingParams())
    assert gen.text == "ok" and gen.finish_reason == "length" and len(script.requests) == 2

    script = Script(lambda n, body, h: (400, {"error": {"message": "bad field"}}, None, 0))
    with canned_server(script) as url:
        with pytest.raises(UserInputError, match="bad field"):
            client(url).generate([USER], SamplingParams())
    assert len(script.requests) == 1


def test_timeout_is_retried():
    script = Script(lambda n, body, h: (200, completion("late" if n == 0 else "fast"), None, 1.5 if n == 0 else 0))
    with canned_server(script) as url:
        t0 = time.monotonic()
        [gen] = client(url, timeout=0.3, max_retries=2).generate([USER], SamplingParams())
        assert time.monotonic() - t0 < 1.4  # did not wait for the slow answer
    assert gen.text == "fast" and len(script.requests) == 2


def test_concurrency_limit_is_respected():
    limit = 3

    def reply(n, body, h):
        deadline = time.monotonic() + 2
        while script.inflight < limit and time.monotonic() < deadline:  # hold until the pool is full
            time.sleep(0.01)
        return 200, completion(body["messages"][0]["content"]), None, 0.02

    script = Script(reply)
    convs = [[{"role": "user", "content": f"c{i}"}] for i in range(9)]
    with canned_server(script) as url:
        gens = client(url, concurrency=limit).generate(convs, SamplingParams())
    assert [g.text for g in gens] == [f"c{i}" for i in range(9)]
    assert script.max_inflight == limit


def test_key_is_sent_but_never_logged_or_leaked(key_env, caplog):
    caplog.set_level(logging.DEBUG)

    def reply(n, body, h):  # a hostile server that echoes the Authorization header back
        status = 500 if n == 0 else 422
        return status, {"error": {"message": f"bad auth {h.get('Authorization')}"}}, None, 0

    script = Script(reply)
    with canned_server(script) as url:
        api = client(url, api_key_env=key_env, continue_final_message=True)
        conv = USER + [{"role": "assistant", "content": "Sure,"}]
        with pytest.raises(UserInputError) as e:
            api.generate([conv], SamplingParams(seed=7))
    assert script.requests[0]["auth"] == f"Bearer {SECRET}"
    body = script.requests[0]["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure,"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["seed"] == 7
    visible = " ".join([str(e.value), caplog.text, repr(api), json.dumps(provenance(api))])
    assert SECRET not in visible and "***" in str(e.value)
    assert provenance(api)["api_key_set"] is True


def test_make_backend_and_option_checks(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:pw@127.0.0.1:9/v1")
    api = make_backend("m", kind="openai", batch_size=8, device="auto", dtype="auto")
    assert isinstance(api, OpenAIBackend)
    assert api.describe()["base_url"] == "http://127.0.0.1:9/v1"  # no credentials in provenance
    with pytest.raises(UserInputError, match="look the same"):
        api.check_options(["A", "(A)"])
    with pytest.raises(UserInputError, match="unknown"):
        make_backend("m", kind="nope")
