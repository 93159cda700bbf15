"""`cai serve`: an OpenAI-compatible server (chat completions, completions, models) over a cai backend."""

from __future__ import annotations

import click

from cai.cli.options import make_backend_from_options, model_options


@click.command("serve")
@model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; use 0.0.0.0 only on a trusted network or with --api-key-env.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--served-model-name", default=None, help="Model name clients send (default: the model spec).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1),
              help="Most concurrent requests gathered into one backend call.")
@click.option("--batch-wait-ms", default=10.0, show_default=True, type=click.FloatRange(0),
              help="How long to wait for more requests before running a batch.")
@click.option("--api-key-env", default=None,
              help="Environment variable holding the key clients must send as a Bearer token.")
def serve(model, backend_kind, batch_size, device, dtype, host, port, served_model_name, max_batch,
          batch_wait_ms, api_key_env) -> None:
    """Serve a model at http://HOST:PORT/v1, OpenAI-compatible.

    /v1/chat/completions and /v1/completions (streaming, n, stop, seed, log-probs of
    the sampled tokens), /v1/models, /v1/models/ID and /health. Unsupported fields
    (response_format, tools, penalties, ...) are refused with a 400. Any
    OpenAI-compatible client works: the openai package, `llm`, cai's own `--backend openai`.
    """
    from cai.serve import ChatServer

    backend = make_backend_from_options(model, backend_kind, batch_size, device, dtype)
    server = ChatServer(backend, host=host, port=port, model_name=served_model_name, max_batch=max_batch,
                        batch_wait_s=batch_wait_ms / 1000, api_key_env=api_key_env)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key_env:
        click.echo(f"Warning: serving on {host} without --api-key-env: anyone who can reach it can use it.", err=True)
    click.echo(f"serving {server.model_name} at {server.url} (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    click.echo(f"stopped after {server.batcher.batches} backend batches", err=True)
