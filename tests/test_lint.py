"""The code base stays ruff-clean: lint and formatting are part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO

RUFF = shutil.which("ruff", path=str(REPO / ".venv" / "bin")) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed")
@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    result = subprocess.run([RUFF, *command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_backends_import_nothing_from_webui():
    """Arrows point down: a loader knows nothing of the app or of Gradio."""
    code = (
        "import sys, backends.registry, backends.llamacpp; "
        "print(sorted(m for m in sys.modules if m.startswith(('webui', 'gradio'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
