"""``inglenook loaders`` and the loader flags of ``inglenook run``, through the real command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, cli

pytestmark = pytest.mark.slow  # real models, servers or browsers

# Runs the CLI in a process where `import gptqmodel` fails, as it would were the package not installed.
BLOCKED = "import sys; sys.modules['gptqmodel'] = None; from webui.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _blocked(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_loaders_json_lists_every_loader_with_what_it_loads_and_honours():
    result = cli("loaders", "--json")
    assert result.returncode == 0, result.stderr
    found = {item["name"]: item for item in json.loads(result.stdout)}
    # the built-ins in pick order, then plugins from entry points (tests/run.sh installs the test loader `fake`)
    assert list(found) == ["llama.cpp", "gptq", "transformers", "openai-remote", "fake"]
    assert found["fake"]["loads"].startswith("`.fake`")
    assert all(item["available"] for item in found.values())
    assert "grammar" in found["llama.cpp"]["samplers"]
    assert "grammar" in found["transformers"]["ignores"] and "top_p" in found["transformers"]["samplers"]
    assert "allow_pickle" in found["transformers"]["settings"]
    assert "gptq" in found["gptq"]["loads"]


def test_a_loader_with_a_missing_dependency_is_unavailable_with_a_hint_and_the_others_work(models_dir):
    listed = _blocked("loaders", "--json")
    assert listed.returncode == 0, listed.stderr
    found = {item["name"]: item for item in json.loads(listed.stdout)}
    assert found["gptq"]["available"] is False
    assert "inglenook loaders install gptq" in found["gptq"]["problem"]
    assert found["llama.cpp"]["available"] and found["transformers"]["available"]
    text = _blocked("loaders")
    assert "gptq  (UNAVAILABLE" in text.stdout
    ran = _blocked(
        "run", "default", "The capital of France is", "--temperature", "0", "--max-tokens", "6", "--json",
        "--models-dir", str(models_dir),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["loader"] == "llama.cpp" and "capital" in result["text"]


def test_loading_a_gptq_folder_without_gptqmodel_says_how_to_install_it(tiny_gptq):
    ran = _blocked("run", str(tiny_gptq), "Hello", "--max-tokens", "2")
    assert ran.returncode == 1
    assert "loader gptq is unavailable" in ran.stderr and "inglenook loaders install gptq" in ran.stderr


def test_run_refuses_pickle_weights_unless_allowed(tiny_llama, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama / name, folder / name)
    torch.save(load_file(tiny_llama / "model.safetensors"), folder / "pytorch_model.bin")
    args = ("run", str(folder), "The capital of France is", "--temperature", "0", "--max-tokens", "4", "--json")
    refused = cli(*args)
    assert refused.returncode == 1
    assert "--allow-pickle" in refused.stderr and "run code" in refused.stderr
    allowed = cli(*args, "--allow-pickle")
    assert allowed.returncode == 0, allowed.stderr
    result = json.loads(allowed.stdout)
    assert result["loader"] == "transformers"
    assert result["usage"]["completion_tokens"] == 4
