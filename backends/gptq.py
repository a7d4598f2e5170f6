"""GPTQ loader: checkpoints whose config says ``quantization_config.quant_method == "gptq"``.

Uses GPTQModel (PyPI ``gptqmodel``), the maintained successor of auto-gptq
(which no longer imports with transformers 5). GPTQModel picks the kernel:
CUDA kernels on a GPU, its torch CPU kernel otherwise. Once it has built the
quantized module, generation is the transformers loader's token loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from backends.base import Loader, LoadSettings, Model, ModelLoadError, missing_modules
from backends.hookspecs import hookimpl
from backends.transformers import (
    SUPPORTED_PARAMS,
    TransformersModel,
    apply_threads,
    check_folder,
    context_length,
    model_info,
    quant_method,
    read_config,
    resolve_device,
)

CPU_WORKERS_ENV = "GPTQMODEL_CPU_WORKERS"


@dataclass
class GptqSettings(LoadSettings):
    device: str = "auto"  # auto = cuda when available, else cpu
    backend: str = "auto"  # GPTQModel kernel backend (auto picks the fastest that works on the device)
    trust_remote_code: bool = False


def cpu_workers_default() -> None:
    """GPTQModel sizes a CPU worker pool that fails on small machines unless told the core count.

    Without it, on 2 cores: ``Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1``.
    The user's own setting wins.
    """
    os.environ.setdefault(CPU_WORKERS_ENV, str(max(1, os.cpu_count() or 1)))


def gptq_config(folder: Path) -> dict:
    """The GPTQ quantization settings of ``folder``; ModelLoadError if it is not a GPTQ checkpoint."""
    config = read_config(folder)
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        side = folder / "quantize_config.json"
        if side.is_file():
            try:
                qc = json.loads(side.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ModelLoadError(f"{folder.name}/quantize_config.json cannot be read: {exc}") from None
    if not isinstance(qc, dict):
        raise ModelLoadError(
            f"{folder.name} is not a GPTQ checkpoint: config.json has no quantization_config (and there is no "
            "quantize_config.json); load a full-precision folder with the transformers loader"
        )
    method = str(qc.get("quant_method", qc.get("method", ""))).lower()
    if method != "gptq":
        raise ModelLoadError(f"{folder.name} is quantized with {method or 'an unnamed method'!r}, not GPTQ")
    return qc


def quiet_stdout():
    """Send what GPTQModel prints to stderr, so `--json` output on stdout stays parseable."""
    return contextlib.redirect_stdout(sys.stderr)


class GptqLoader(Loader):
    name = "gptq"
    description = "GPTQ checkpoints through GPTQModel (CUDA kernels on a GPU, a torch kernel on CPU)"
    settings_type = GptqSettings
    supported_params = SUPPORTED_PARAMS
    install_hint = 'inglenook loaders install gptq (or: pip install "inglenook[torch]")'
    loads = 'Hugging Face folders whose config.json has quantization_config.quant_method "gptq"'

    def available(self) -> str | None:
        cpu_workers_default()
        missing = missing_modules("torch", "gptqmodel")
        return f"GPTQModel is not importable ({missing}); {self.install_hint}" if missing else None

    def can_load(self, path: Path) -> bool:
        return path.is_dir() and quant_method(path) == "gptq"

    def check(self, path: Path, settings: LoadSettings | None = None) -> None:
        trust = bool(getattr(settings, "trust_remote_code", False))
        check_folder(path, allow_pickle=False, trust_remote_code=trust)
        gptq_config(path)

    def load(self, path: Path, settings: LoadSettings) -> Model:
        self.check(path, settings)
        missing = self.available()
        if missing:
            raise ModelLoadError(missing)
        qc = gptq_config(path)
        device = resolve_device(getattr(settings, "device", "auto"))
        backend = getattr(settings, "backend", "auto")
        trust = bool(getattr(settings, "trust_remote_code", False))
        apply_threads(settings.threads)
        try:
            with quiet_stdout():
                from gptqmodel import BACKEND, GPTQModel
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise ModelLoadError(f"GPTQModel is not importable ({exc}); {self.install_hint}") from exc

        try:
            with quiet_stdout():
                wrapper = GPTQModel.load(
                    str(path), device=device, backend=BACKEND(backend.lower()), trust_remote_code=trust
                )
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust)
        except ValueError as exc:
            raise ModelLoadError(f"GPTQModel could not load {path.name}: {exc}") from exc
        except Exception as exc:
            raise ModelLoadError(f"GPTQModel could not load {path.name}: {type(exc).__name__}: {exc}") from exc
        module = wrapper.model
        module.eval()
        n_ctx = context_length(module.config, settings.n_ctx)
        quant = f"GPTQ {qc.get('bits', '?')}-bit g{qc.get('group_size', '?')}"
        info = model_info(path, self.name, module, tokenizer, n_ctx, quant)
        info.metadata["gptq_kernel"] = _kernel_name(module)
        return TransformersModel(module, tokenizer, info, device, n_ctx, owner=wrapper)


def _kernel_name(module) -> str:
    """The class name of the first quantized linear layer: which kernel GPTQModel chose."""
    for sub in module.modules():
        name = type(sub).__name__
        if "Linear" in name and name not in ("Linear", "NonDynamicallyQuantizableLinear"):
            return name
    return ""


@hookimpl
def register_loaders(register) -> None:
    register(GptqLoader())
