"""`cai serve` as an OpenAI client sees it: the official `openai` package (and `llm`) against
a real server on 127.0.0.1 (a free port) serving the tiny random Llama built in conftest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fakes import ScriptedBackend

from cai.serve import ChatServer, find_stop, top_logprobs

openai = pytest.importorskip("openai")

USER = [{"role": "user", "content": "Tell me a story about a lighthouse."}]
KEY_ENV = "CAI_TEST_SERVE_API_KEY"


@pytest.fixture(scope="module")
def server(tiny_backend):
    with ChatServer(tiny_backend, model_name="tiny", batch_wait_s=0.02) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def chat(client, **kw):
    kw.setdefault("model", "tiny")
    kw.setdefault("messages", USER)
    return client.chat.completions.create(**kw)


def streamed(stream):
    """(text per choice, finish per choice, logprob entries per choice, usage, chunk count)."""
    texts, finish, entries, usage, n = {}, {}, {}, None, 0
    for chunk in stream:
        n += 1
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            delta = getattr(c, "delta", None)
            piece = delta.content if delta is not None else c.text
            texts[c.index] = texts.get(c.index, "") + (piece or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
            lp = getattr(c, "logprobs", None)
            if lp is not None and getattr(lp, "content", None):
                entries.setdefault(c.index, []).extend(lp.content)
    return texts, finish, entries, usage, n


# --- chat completions ---------------------------------------------------------------


def test_stream_gives_the_same_answer_as_a_plain_request(client, tiny_backend):
    plain = chat(client, max_tokens=10, temperature=0.9, seed=11)
    texts, finish, _, usage, chunks = streamed(chat(client, max_tokens=10, temperature=0.9, seed=11, stream=True,
                                                    stream_options={"include_usage": True}))
    assert texts[0] == plain.choices[0].message.content and texts[0]
    assert finish[0] == plain.choices[0].finish_reason
    assert chunks >= 4  # role, several content pieces, finish, usage: really streamed
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens == len(tiny_backend.encode(USER))


def test_stop_cuts_the_text_and_finishes_with_stop(client):
    full = chat(client, max_tokens=12, temperature=0).choices[0].message.content
    assert len(full) > 6
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: find_stop(full, [stop])]
    r = chat(client, max_tokens=12, temperature=0, stop=[stop, "never-appears-xyz"])
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 12
    texts, finish, _, _, _ = streamed(chat(client, max_tokens=12, temperature=0, stop=stop, stream=True))
    assert texts[0] == expected and finish[0] == "stop"  # the stop text never streams either


def test_n2_logprobs_of_the_sampled_tokens(client):
    r = chat(client, max_tokens=6, temperature=1.0, seed=5, n=2, logprobs=True, top_logprobs=3)
    assert [c.index for c in r.choices] == [0, 1]
    counts = [len(c.logprobs.content) for c in r.choices]
    assert sum(counts) == r.usage.completion_tokens and all(n >= 1 for n in counts)
    assert r.choices[0].message.content != r.choices[1].message.content  # n samples, not one copied
    entries = [e for c in r.choices for e in c.logprobs.content]
    assert all(len(e.top_logprobs) == 3 for e in entries)
    assert all(e.logprob <= e.top_logprobs[0].logprob + 1e-5 for e in entries)
    # Sampled from a near-uniform random model: the sampled tokens are not the argmax ones.
    assert any(e.token != e.top_logprobs[0].token for e in entries)
    for c in r.choices:  # the entries spell the answer (an end-of-turn token would add nothing)
        if c.finish_reason == "length":
            assert bytes(b for e in c.logprobs.content for b in e.bytes).decode() == c.message.content


def test_greedy_logprobs_match_the_model(client, tiny_backend):
    r = chat(client, max_tokens=4, temperature=0, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 4
    assert all(e.token == e.top_logprobs[0].token for e in content)  # greedy: the sampled token is the top one
    direct = top_logprobs(tiny_backend, [USER], 5)[0]
    assert [t.logprob for t in content[0].top_logprobs] == pytest.approx([v for _, v in direct], abs=1e-4)


def test_seeded_answer_does_not_depend_on_the_batch(client):
    alone = chat(client, max_tokens=8, temperature=1.0, seed=123).choices[0].message.content
    got: dict[int, str] = {}

    def ask(i):
        seed = 123 if i == 0 else 1000 + i
        messages = USER if i == 0 else [{"role": "user", "content": f"question {i} " * (i + 1)}]
        got[i] = chat(client, messages=messages, max_tokens=8 if i == 0 else 3 + i, temperature=1.0,
                      seed=seed).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] == alone


def test_developer_role_is_the_system_role(client):
    as_system = chat(client, messages=[{"role": "system", "content": "Be brief."}] + USER, max_tokens=5, temperature=0)
    as_developer = chat(client, messages=[{"role": "developer", "content": "Be brief."}] + USER, max_tokens=5,
                        temperature=0)
    assert as_developer.choices[0].message.content == as_system.choices[0].message.content
    assert as_developer.usage.prompt_tokens == as_system.usage.prompt_tokens


def test_a_final_assistant_message_is_continued(client, tiny_backend):
    conv = USER + [{"role": "assistant", "content": "Once upon a"}]
    r = chat(client, messages=conv, max_tokens=3, temperature=0, extra_body={"continue_final_message": True,
                                                                             "add_generation_prompt": False})
    assert r.usage.prompt_tokens == len(tiny_backend.encode(conv))
    with pytest.raises(openai.BadRequestError, match="continue_final_message"):
        chat(client, extra_body={"continue_final_message": True})  # the last message is the user's


# --- what is refused ----------------------------------------------------------------


def test_wrong_model_is_404(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, model="gpt-4o", max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert client.models.retrieve("tiny").id == "tiny"
    assert [m.id for m in client.models.list()] == ["tiny"]


@pytest.mark.parametrize("extra", [
    {"response_format": {"type": "json_object"}},
    {"presence_penalty": 0.5},
    {"frequency_penalty": -1},
    {"logit_bias": {"42": 5}},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    {"extra_body": {"mirostat": 2}},
    {"extra_body": {"top_k": 40}},
    {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
])
def test_unsupported_fields_are_refused_with_400(client, extra):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, max_tokens=2, **extra)
    assert e.value.status_code == 400 and e.value.body["type"] == "invalid_request_error"
    assert e.value.body["message"]


def test_no_op_values_are_accepted(client):
    r = chat(client, max_tokens=2, presence_penalty=0, frequency_penalty=0.0, response_format={"type": "text"},
             logit_bias={}, user="someone", temperature=0)
    assert r.choices[0].message.content is not None


def test_too_long_is_a_400_context_length_error(client):
    long = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, messages=long, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        chat(client, max_tokens=500)  # the prompt fits, the prompt and the answer do not


def test_raw_http_errors_and_health(server):
    def get(path, method="GET", data=None):
        req = urllib.request.Request(server.url.removesuffix("/v1") + path, method=method, data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert get("/health") == (200, {"status": "ok"})
    status, body = get("/v1/nothing")
    assert status == 404 and body["error"]["type"] == "invalid_request_error"
    status, body = get("/v1/chat/completions", "POST", b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body = get("/v1/chat/completions", "POST", b'{"model": "tiny", "messages": []}')
    assert status == 400 and body["error"]["param"] == "messages"


def test_api_key_is_required_except_for_health(tiny_backend, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-serve-test-0123456789")
    with ChatServer(tiny_backend, model_name="tiny", api_key_env=KEY_ENV) as s:
        wrong = openai.OpenAI(base_url=s.url, api_key="sk-wrong-0123456789", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
        assert "sk-wrong" not in str(e.value.body)
        right = openai.OpenAI(base_url=s.url, api_key="sk-serve-test-0123456789", max_retries=0)
        assert right.chat.completions.create(model="tiny", messages=USER, max_tokens=2).choices
        with urllib.request.urlopen(s.url.removesuffix("/v1") + "/health", timeout=10) as r:
            assert r.status == 200


# --- raw completions ----------------------------------------------------------------


def test_completions_continue_a_raw_prompt(client, tiny_backend):
    ids = tiny_backend.encode(USER)
    via_chat = chat(client, max_tokens=6, temperature=0)
    via_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0, logprobs=2)
    c = via_ids.choices[0]
    assert c.text == via_chat.choices[0].message.content  # the rendered template, continued
    assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == via_ids.usage.completion_tokens
    assert all(len(t) >= 2 for t in c.logprobs.top_logprobs)
    via_text = client.completions.create(model="tiny", prompt=tiny_backend.render(USER), max_tokens=6,
                                         temperature=0)
    assert via_text.choices[0].text == c.text and via_text.usage.prompt_tokens == len(ids)
    texts, finish, _, usage, _ = streamed(client.completions.create(
        model="tiny", prompt=ids, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert texts[0] == c.text and finish[0] == c.finish_reason and usage.completion_tokens == 6


def test_completions_several_prompts_and_n(client):
    r = client.completions.create(model="tiny", prompt=["Once upon a time", "The answer is"], n=2,
                                  max_tokens=3, temperature=1.0, seed=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text != r.choices[2].text
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, echo=True)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, suffix="y")


# --- a backend without a decode loop ------------------------------------------------


def test_protocol_backend_stop_n_stream_and_refusals():
    backend = ScriptedBackend(respond=lambda conv: "alpha beta STOP gamma")
    with ChatServer(backend, model_name="scripted") as s:
        c = openai.OpenAI(base_url=s.url, api_key="unused", max_retries=0)
        r = c.chat.completions.create(model="scripted", messages=USER, stop="STOP", n=2, max_tokens=8)
        assert [x.message.content for x in r.choices] == ["alpha beta ", "alpha beta "]
        assert {x.finish_reason for x in r.choices} == {"stop"}
        texts, finish, _, _, _ = streamed(c.chat.completions.create(model="scripted", messages=USER, stream=True))
        assert texts == {0: "alpha beta STOP gamma"} and finish == {0: "stop"}
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            c.chat.completions.create(model="scripted", messages=USER, logprobs=True, max_tokens=4)
        with pytest.raises(openai.BadRequestError, match="tokenizer"):
            c.completions.create(model="scripted", prompt="x")


# --- `llm`, which streams by default --------------------------------------------------


def test_llm_cli_against_cai_serve(server, client, tmp_path):
    exe = Path(sys.executable).with_name("llm")
    if not exe.exists():
        pytest.skip("llm is not installed (pip install llm)")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: cai-tiny\n  model_name: tiny\n  api_base: \"{server.url}\"\n")
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "LLM_LOAD_PLUGINS": ""}  # no third-party plugins
    expected = chat(client, max_tokens=6, temperature=0,
                    messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
    for extra in ([], ["--no-stream"]):
        out = subprocess.run([str(exe), "-m", "cai-tiny", "-o", "max_tokens", "6", "-o", "temperature", "0",
                              *extra, "hi"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.rstrip("\n") == expected.rstrip("\n")
