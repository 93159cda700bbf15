"""A built wheel, installed outside the source tree, finds its constitutions and templates."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_constitutions_and_prompts(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    wheel = next(wheels.glob("cai-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
                   check=True)
    # Dependencies come from the dev venv via PYTHONPATH; .pth files there (our editable
    # install) are not processed for PYTHONPATH entries, so `cai` can only come from the wheel.
    deps = sysconfig.get_paths()["purelib"]
    code = (
        "import cai, cai.constitution as c, cai.templates as t;"
        "print(cai.__file__);"
        "print(sorted(c.packaged_constitutions()));"
        "print(t.packaged_templates());"
        "print(t.PromptTemplates().render('initial_response', prompt='hi').strip())"
    )
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert out[0].startswith(site), out[0]
    assert "harmless" in out[1] and "hhh" in out[1]
    assert "initial_response.jinja" in out[2]
    assert out[3] == "hi"
