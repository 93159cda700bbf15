"""`ChatServer`: cai serve's lifecycle, in-process answers, streaming and its HTTP routes."""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, AsyncIterator, Callable

from cai.backends.base import Backend
from cai.errors import UserInputError
from cai.serve import schema
from cai.serve.engine import Batcher, make_engine
from cai.serve.errors import ApiError, RequestError, as_api_error
from cai.serve.samples import Sample, SampleResult
from cai.serve.schema import Plan


class ChatServer:
    """Serve ``backend`` at ``http://host:port/v1``; ``port=0`` picks a free port.

    Use as a context manager, or ``start()`` (background thread) / ``serve_forever()``
    and ``close()``. If ``api_key_env`` names a set variable, requests must carry
    ``Authorization: Bearer <that key>`` (``/health`` excepted).
    ``chat_completion(body)`` and ``completion(body)`` answer a request body in
    process (no HTTP), raising ``ApiError``.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str | None = None,
        max_batch: int = 32,
        batch_wait_s: float = 0.01,
        api_key_env: str | None = None,
    ) -> None:
        self.backend = backend
        self.model_name = model_name or backend.model_id
        from cai.backends.openai_http import read_api_key

        self._key = read_api_key(api_key_env)  # stripped, like the clients' copy of it
        if api_key_env and not self._key:
            raise UserInputError(f"${api_key_env} is empty; set it to the key clients must send")
        self.engine = make_engine(backend)
        self.created = int(time.time())
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise UserInputError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None
        self.batcher = Batcher(self.engine, max_batch, batch_wait_s)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"

    # --- lifecycle -----------------------------------------------------------------

    def _uvicorn(self) -> Any:
        import uvicorn

        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, log_config=None,
                                lifespan="off", ws="none", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        return self._server

    def start(self) -> "ChatServer":
        server = self._uvicorn()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self._sock]},
                                        name="cai-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            raise RuntimeError("cai serve did not start")
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (KeyboardInterrupt, after a graceful shutdown)."""
        self._uvicorn().run(sockets=[self._sock])

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread:
            self._thread.join(timeout=10)
        self.batcher.close()
        self._sock.close()

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- requests, in process --------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self._key is None:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {self._key}".encode())

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "cai",
                "max_model_len": self.engine.context_window}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model(self.model_name)]}

    def model(self, model_id: str) -> dict[str, Any]:
        schema.check_model(model_id, self.model_name)
        return self._model(self.model_name)

    def chat_completion(self, body: Any) -> dict[str, Any]:
        plan = self.plan_chat(body)
        if plan.stream:
            raise RequestError("stream=true needs the HTTP endpoint", param="stream")
        return schema.respond(plan, [f.result() for f in self._submit(plan)], self.model_name)

    def completion(self, body: Any) -> dict[str, Any]:
        plan = self.plan_completion(body)
        if plan.stream:
            raise RequestError("stream=true needs the HTTP endpoint", param="stream")
        return schema.respond(plan, [f.result() for f in self._submit(plan)], self.model_name)


    # --- validation (the schema is cai.serve.schema's) ------------------------------

    def plan_chat(self, body: Any) -> Plan:
        return schema.plan_chat(body, self.engine, self.model_name)

    def plan_completion(self, body: Any) -> Plan:
        return schema.plan_completion(body, self.engine, self.model_name)

    def _submit(self, plan: Plan, emit: Callable[[int, str, list], None] | None = None) -> list[Future]:
        """Queue every sample (prompt-major, then n); ``emit(choice, text, entries)`` streams."""
        futures = []
        for p, (prompt, count, max_tokens) in enumerate(zip(plan.prompts, plan.prompt_tokens, plan.max_tokens)):
            for j in range(plan.n):
                index = p * plan.n + j
                seed = plan.seed
                if seed is not None and j:
                    seed = (seed * 1_000_003 + j) % (2**63)  # n samples differ, reproducibly
                s = Sample(prompt=prompt, prompt_tokens=count, max_tokens=max_tokens, **plan.settings(seed=seed),
                           emit=(lambda text, entries, i=index: emit(i, text, entries)) if emit else None)
                plan.samples.append(s)
                futures.append(self.batcher.submit(s))
        return futures


    # --- responses -----------------------------------------------------------------

    async def _events(self, plan: Plan) -> AsyncIterator[str]:
        """Server-sent events for a streamed request; the samples are cancelled if the client leaves."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def put(*event: Any) -> None:  # from the batch thread
            try:
                loop.call_soon_threadsafe(q.put_nowait, event)
            except RuntimeError:  # the server has shut down: nobody is listening
                pass

        futures = self._submit(plan, lambda i, text, entries: put("delta", i, text, list(entries)))
        for i, f in enumerate(futures):
            f.add_done_callback(lambda f, i=i: put("done", i, f, None))
        chat = plan.kind == "chat"
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}" if chat else f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(i: int, text: str | None, entries: list | None, finish: str | None, role: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                    {} if text is None else {"content": text})
                choice = {"index": i, "delta": delta,
                          "logprobs": {"content": entries} if entries is not None and plan.logprobs else None,
                          "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": i, "text": text or "", "finish_reason": finish,
                          "logprobs": schema.legacy_logprobs(entries) if entries is not None and plan.logprobs else None}
                obj = "text_completion"
            payload: dict[str, Any] = {"id": cid, "object": obj, "created": created, "model": self.model_name,
                                       "choices": [choice]}
            if plan.include_usage:
                payload["usage"] = None
            return f"data: {json.dumps(payload)}\n\n"

        sent = [0] * len(futures)
        sent_entries = [0] * len(futures)
        results: list[SampleResult | None] = [None] * len(futures)
        try:
            if chat:
                for i in range(len(futures)):
                    yield chunk(i, None, None, None, role=True)
            left = len(futures)
            while left:
                kind, i, a, b = await q.get()
                if kind == "delta":
                    sent[i] += len(a)
                    sent_entries[i] += len(b)
                    yield chunk(i, a, b, None)
                    continue
                left -= 1
                error = a.exception() if not a.cancelled() else RequestError("cancelled")
                if error is not None:
                    e = as_api_error(error)
                    yield f"data: {json.dumps(e.body())}\n\n"
                    return
                r = results[i] = a.result()
                rest, extra = r.text[sent[i]:], (r.logprobs or [])[sent_entries[i]:]
                if rest or extra:
                    yield chunk(i, rest, extra, None)
                yield chunk(i, None, None, r.finish_reason)
            if plan.include_usage:
                usage = schema.usage(plan, [r for r in results if r is not None])
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield "data: " + json.dumps({"id": cid, "object": obj, "created": created, "model": self.model_name,
                                             "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for s in plan.samples:
                s.cancelled = True  # a client that left stops its rows at the next token

    # --- the ASGI app --------------------------------------------------------------

    def app(self) -> Any:
        """The Starlette application (served by uvicorn in ``start``/``serve_forever``)."""
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        def fail(e: ApiError) -> JSONResponse:
            return JSONResponse(e.body(), status_code=e.status)

        def guarded(handler: Callable[[Request], Any], auth: bool = True) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Any:
                if auth and not self.authorized(request.headers.get("authorization")):
                    return fail(ApiError("invalid API key", 401, "authentication_error", code="invalid_api_key"))
                try:
                    return await handler(request)
                except Exception as e:  # noqa: BLE001 - every failure gets an OpenAI-shaped body
                    return fail(as_api_error(e))
            return endpoint

        async def read(request: Request) -> Any:
            raw = await request.body()
            try:
                return json.loads(raw or b"null")
            except ValueError:
                raise RequestError("the request body is not valid JSON") from None

        async def generate(request: Request, plan_fn: Callable[[Any], Plan]) -> Any:
            plan = plan_fn(await read(request))
            if plan.stream:
                return StreamingResponse(self._events(plan), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            results = [await asyncio.wrap_future(f) for f in self._submit(plan)]
            return JSONResponse(schema.respond(plan, results, self.model_name))

        async def chat(request: Request) -> Any:
            return await generate(request, self.plan_chat)

        async def completions(request: Request) -> Any:
            return await generate(request, self.plan_completion)

        async def models(request: Request) -> Any:
            return JSONResponse(self.models())

        async def model(request: Request) -> Any:
            return JSONResponse(self.model(request.path_params["model_id"]))

        async def health(request: Request) -> Any:
            return JSONResponse({"status": "ok"})

        async def http_error(request: Request, exc: Exception) -> JSONResponse:
            status = getattr(exc, "status_code", 500)
            message = f"no route {request.method} {request.url.path}" if status in (404, 405) else str(exc)
            return fail(ApiError(message, status, "invalid_request_error" if status < 500 else "server_error"))

        routes = [
            Route("/health", guarded(health, auth=False), methods=["GET"]),
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", guarded(model), methods=["GET"]),
            Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
            Route("/v1/completions", guarded(completions), methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
