"""The lean default install: without torch/transformers/gptqmodel the app starts, builds its UI and lists those
loaders as unavailable with the install hint; a loader plugin installed while the app runs is registered
without a restart; the install command is the [torch] extra of our own metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from backends.registry import LoaderRegistry
from webui.models.install import install, install_command, requirements
from webui.models.panel import install_loader

REPO = Path(__file__).resolve().parent.parent

# A subprocess in which torch & co. cannot be imported, as in a venv installed without the [torch] extra.
BLOCK = """
import importlib.abc, sys
BLOCKED = {"torch", "transformers", "gptqmodel", "accelerate", "triton"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def _run_without_torch(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO
    )


def test_app_starts_and_lists_torch_loaders_as_unavailable_without_torch(tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "parrot.fake").write_text(json.dumps({"reply": "Hi."}))
    code = """
import json, sys
from pathlib import Path
from webui.app import App
from webui.cli.loaders import describe
from webui.server import build_server
from webui.settings import Settings
root = Path(sys.argv[1])
app = App.create(Settings(models_dir=root / "models", user_data=root / "user_data"))
app.load_model("parrot.fake")
build_server(app)  # every face: the Gradio UI, the API, the extension routes
app.close()
heavy = sorted(m for m in ("torch", "transformers", "gptqmodel") if m in sys.modules)
print(json.dumps({"loaders": describe(app.registry), "heavy": heavy}))
"""
    done = _run_without_torch(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    by_name = {d["name"]: d for d in out["loaders"]}
    assert by_name["llama.cpp"]["available"] and by_name["fake"]["available"]
    for name in ("transformers", "gptq"):
        assert not by_name[name]["available"]
        assert f"inglenook loaders install {name}" in by_name[name]["problem"], by_name[name]


def test_loaders_command_without_torch(tmp_path: Path):
    code = "from webui.cli.main import main\nsys.exit(main(['loaders']))\n"
    done = _run_without_torch(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "transformers  (UNAVAILABLE: No module named 'torch'" in done.stdout
    assert "llama.cpp  (available)" in done.stdout


def test_install_command_is_the_torch_extra():
    reqs = requirements("torch")
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("gptqmodel==") for r in reqs)
    cmd = install_command("transformers")
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and cmd[-len(reqs) :] == reqs


def test_refresh_registers_a_plugin_installed_while_running(tmp_path: Path, monkeypatch):
    """A loader package installed after start (as pip leaves it: a module and its dist-info with an entry point)
    is picked up by refresh(); the loaders already built (with the app's settings on them) stay the same objects."""
    registry = LoaderRegistry()
    llama = registry.get("llama.cpp")
    (tmp_path / "late_loader.py").write_text(
        "from pathlib import Path\n"
        "from backends.base import Loader\n"
        "from backends.hookspecs import hookimpl\n"
        "class Late(Loader):\n"
        "    name = 'late'\n"
        "    def can_load(self, path: Path) -> bool:\n"
        "        return path.suffix == '.late'\n"
        "    def load(self, path, settings):\n"
        "        raise NotImplementedError\n"
        "@hookimpl\n"
        "def register_loaders(register):\n"
        "    register(Late())\n"
    )
    info = tmp_path / "late_loader-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: late-loader\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[inglenook.backends]\nlate = late_loader\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "late" not in registry.names()
    assert registry.refresh() == ["late"]
    assert registry.get("llama.cpp") is llama and registry.pick(Path("x.late")).name == "late"
    assert registry.refresh() == []


def test_install_streams_pip_and_registers_the_loader(tmp_path: Path, monkeypatch):
    """A real pip install of a loader package (built from a folder, into a target directory on sys.path, so
    the shared environment is left alone): pip's lines arrive as progress, and the loader is usable afterwards."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "piped-loader"\nversion = "0.1"\n'
        '[project.entry-points."inglenook.backends"]\npiped = "piped_loader"\n'
        '[tool.setuptools]\npy-modules = ["piped_loader"]\n'
    )
    (pkg / "piped_loader.py").write_text(
        "from backends.base import Loader\nfrom backends.hookspecs import hookimpl\n"
        "class Piped(Loader):\n    name = 'piped'\n    def can_load(self, path):\n        return False\n"
        "    def load(self, path, settings):\n        raise NotImplementedError\n"
        "@hookimpl\ndef register_loaders(register):\n    register(Piped())\n"
    )
    target = tmp_path / "site"
    monkeypatch.syspath_prepend(str(target))
    registry = LoaderRegistry()
    lines: list[str] = []
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--target", str(target), str(pkg)]  # fmt: skip
    assert install("piped", registry, lines.append, command=cmd) is None
    assert lines[0].startswith("$ pip install") and any("Successfully installed piped-loader" in x for x in lines)
    assert "piped" in registry.names()
    failed = install("nothing", registry, lines.append, command=[sys.executable, "-m", "pip", "install", "--no-index",
                                                                  "no-such-package-here"])  # fmt: skip
    assert failed is not None and failed.startswith("pip failed (exit 1)")


def test_install_button_is_for_admins_only(make_app):
    """Beyond this machine without logins nobody is an admin; with logins only an --admin-auth login is."""
    app = make_app(host="0.0.0.0", insecure_no_auth=True)
    assert "installing loaders is refused" in next(install_loader(app, "transformers"))
    logins = make_app(ui_auth=[("alice", "pw")], admin_auth=[("root", "pw2")])
    assert "installing loaders is refused" in next(install_loader(logins, "transformers", admin=False))


def test_asking_whether_a_loader_is_available_imports_nothing_heavy():
    """The model list and `doctor` ask every loader; with torch installed that must still not import torch or
    GPTQModel into the server (seconds and hundreds of MB, and GPTQModel's banner on the terminal)."""
    code = """
import sys
from backends.registry import LoaderRegistry
registry = LoaderRegistry()
answers = {name: registry.get(name).available() for name in ("transformers", "gptq")}
print(answers, sorted(m for m in ("torch", "transformers", "gptqmodel") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'transformers': None, 'gptq': None} []", done.stdout
