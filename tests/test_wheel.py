"""The built wheel, installed in a scratch venv outside the source tree: every module imports, the CLI runs.

The wheel is built from a clean copy of the source (what git tracks or would track), so
a stale build/ directory cannot hide a package the wheel leaves out. Dependencies come
from the dev venv's site-packages on PYTHONPATH; .pth files there (our editable install)
are not processed for PYTHONPATH entries, so `cai` can only come from the wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() and not name.startswith("tests/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A scratch venv holding only the wheel; returns its python, cai script, site dir and environment."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know the source files")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, cwd=tmp)
    wheel = next(wheels.glob("cai-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
           "HOME": str(tmp), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "CAI_NO_PROGRESS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    return {"py": str(py), "cai": str(venv / "bin" / "cai"), "site": site, "env": env, "cwd": tmp}


def _run(installed: dict, *argv: str) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, cwd=installed["cwd"], env=installed["env"])
    assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


def test_wheel_holds_every_package_of_the_source_tree(installed):
    src_packages = sorted(str(p.parent.relative_to(ROOT)).replace("/", ".")
                          for p in (ROOT / "cai").rglob("__init__.py") if "__pycache__" not in p.parts)
    out = _run(installed, installed["py"], "-c",
               "import cai, pkgutil, json; print(json.dumps(sorted(m.name for m in "
               "pkgutil.walk_packages(cai.__path__, 'cai.') if m.ispkg) + ['cai']))")
    assert set(src_packages) | {"cai.constitutions", "cai.prompts"} <= set(json.loads(out))


def test_every_module_imports_from_the_wheel(installed):
    code = (
        "import cai, importlib, pkgutil, sys, json\n"
        "names = [m.name for m in pkgutil.walk_packages(cai.__path__, 'cai.')]\n"
        "bad = {}\n"
        "for n in names:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as e:\n"
        "        bad[n] = repr(e)\n"
        "print(json.dumps({'file': cai.__file__, 'n': len(names), 'names': names, 'bad': bad}))\n"
    )
    result = json.loads(_run(installed, installed["py"], "-c", code).splitlines()[-1])
    assert result["file"].startswith(installed["site"]), result["file"]
    source = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "cai").rglob("*.py")
              if "__pycache__" not in p.parts and p.stem != "__init__"}
    assert not source - set(names := result["names"]), sorted(source - set(names))
    assert result["n"] > 50 and not result["bad"], result["bad"]


def test_the_wheels_cli_runs(installed):
    cai = installed["cai"]
    assert "Run self-improvement rounds" in _run(installed, cai, "run", "--help")
    _run(installed, cai, "eval", "--help")
    assert "--learning-rate" in _run(installed, cai, "train", "sft", "--help")  # builds TRL's flags from trl
    out = _run(installed, cai, "constitution", "validate", "harmless", "hhh")
    assert "harmless" in out
    templates = _run(installed, cai, "prompts", "list")
    assert "initial_response" in templates


def test_wheel_ships_constitutions_and_prompts(installed):
    code = (
        "import cai.constitution as c, cai.templates as t;"
        "print(sorted(c.packaged_constitutions()));"
        "print(t.packaged_templates());"
        "print(t.PromptTemplates().render('initial_response', prompt='hi').strip())"
    )
    out = _run(installed, installed["py"], "-c", code).splitlines()
    assert "harmless" in out[0] and "hhh" in out[0]
    assert "initial_response.jinja" in out[1]
    assert out[2] == "hi"


def test_wheel_ships_the_cpu_kernel_source(installed):
    code = "from cai.backends.cpu_kernels import SOURCE; print(SOURCE.is_file(), SOURCE.name)"
    assert _run(installed, installed["py"], "-c", code).split() == ["True", "decode_attention.cpp"]
