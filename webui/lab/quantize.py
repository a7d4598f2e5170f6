"""Quantize a GGUF model with llama.cpp's own ``llama_model_quantize``, in a child process.

The quantization itself is native code that can crash or run for minutes, so it runs in a process of its
own (``python -m webui.lab.quantize``): a crash or a cancel ends that process, never the caller. The child
writes to a hidden ``.NAME.partial`` file next to the target (the models list skips dot files) and the
parent renames it only when the child reports success; on any failure or cancel the partial file is removed.

The child hooks llama.cpp's log (``llama_log_set``) and turns its ``[  i/  n] tensor`` lines into progress
lines on stdout (JSON, one object per line), so the parent can show "tensor i of n".

The types offered are llama.cpp's own ``LLAMA_FTYPE_*`` constants as llama-cpp-python exports them.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import CancelToken, ModelLoadError
from backends.gguf_file import read_header
from webui.lab.child import emit, run_child
from webui.paths import UnsafeName, inside

FTYPE_PREFIXES = ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")
UNQUANTIZED = {"F32", "F16", "BF16"}
# An upper bound on the output's size per parameter (bytes), by target: 8-bit and below stay under Q8_0's
# 8.5 bits; a few tensors (norms) stay F32 but are tiny. The margin covers the header and the vocabulary.
BYTES_PER_PARAM = {"F32": 4.0, "F16": 2.0, "BF16": 2.0}
QUANT_BYTES_PER_PARAM = 8.5 / 8
MARGIN_BYTES = 64 * 2**20
PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


class QuantizeError(ValueError):
    """Quantizing cannot start or did not finish; the message is for the user."""


class QuantizeCancelled(QuantizeError):
    """The user cancelled; the partial file is gone."""


def quant_types() -> dict[str, int]:
    """Every target type llama.cpp offers: ``{"Q4_K_M": 15, ...}`` from the ``LLAMA_FTYPE_*`` constants."""
    import llama_cpp

    found = {}
    for name in dir(llama_cpp):
        for prefix in FTYPE_PREFIXES:
            if name.startswith(prefix):
                found[name[len(prefix) :]] = int(getattr(llama_cpp, name))
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def free_bytes(folder: Path) -> int:
    """Free space where ``folder`` lives (tests patch this to play a full disk)."""
    return shutil.disk_usage(folder).free


@dataclass
class QuantizeJob:
    """A checked request: where from, where to, which type, and what the user should know first."""

    source: Path
    target: Path
    qtype: str
    ftype: int
    imatrix: Path | None = None
    requantize: bool = False
    needed_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def partial(self) -> Path:
        return self.target.with_name(f".{self.target.name}.partial")


@dataclass
class QuantizeResult:
    target: Path
    qtype: str
    size: int
    seconds: float
    source_size: int
    warnings: list[str] = field(default_factory=list)
    log_tail: str = ""

    def as_dict(self) -> dict:
        return {
            "output": str(self.target),
            "type": self.qtype,
            "size": self.size,
            "source_size": self.source_size,
            "seconds": round(self.seconds, 2),
            "warnings": self.warnings,
        }


def default_name(source: Path, qtype: str) -> str:
    """``gemma-3-270m-Q4_K_M.gguf`` from ``gemma-3-270m-Q8_0.gguf``: the old type tag is replaced, not stacked."""
    stem = source.stem
    for name in sorted(quant_types(), key=len, reverse=True):
        for sep in ("-", "."):
            if stem.upper().endswith(f"{sep}{name}"):
                stem = stem[: -len(name) - 1]
                break
        else:
            continue
        break
    return f"{stem}-{qtype}.gguf"


def plan(
    source: Path, qtype: str, models_dir: Path, out: str | None = None, imatrix: Path | None = None
) -> QuantizeJob:
    """Check everything that can be checked before a byte is written; raise QuantizeError saying what is wrong."""
    types = quant_types()
    wanted = qtype.strip().upper()
    if wanted not in types:
        raise QuantizeError(f"unknown quantization type {qtype!r}; llama.cpp offers: {', '.join(types)}")
    if not source.is_file():
        raise QuantizeError(f"{source} is not a file")
    try:
        header = read_header(source)
    except ModelLoadError as exc:
        raise QuantizeError(f"cannot quantize {source.name}: {exc}") from None
    name = out or default_name(source, wanted)
    if not name.lower().endswith(".gguf"):
        name += ".gguf"
    try:
        target = inside(models_dir, name, "output name")
    except UnsafeName as exc:
        raise QuantizeError(str(exc)) from None
    if target.exists():
        raise QuantizeError(f"{target.name} already exists in {models_dir}; choose another --out name")
    if imatrix is not None and not imatrix.is_file():
        raise QuantizeError(f"importance matrix {imatrix} is not a file")
    current = header.quantization
    job = QuantizeJob(source, target, wanted, types[wanted], imatrix)
    if current and current not in UNQUANTIZED:
        job.requantize = True
        job.warnings.append(
            f"{source.name} is already quantized ({current}); quantizing it again to {wanted} loses more quality "
            "than quantizing from the F16/BF16 original would. Use the original if you have it."
        )
    per_param = BYTES_PER_PARAM.get(wanted, QUANT_BYTES_PER_PARAM)
    job.needed_bytes = int(header.parameter_count * per_param) + MARGIN_BYTES
    models_dir.mkdir(parents=True, exist_ok=True)
    free = free_bytes(models_dir)
    if free < job.needed_bytes:
        raise QuantizeError(
            f"not enough disk space in {models_dir}: {wanted} of {header.parameter_count:,} parameters needs up to "
            f"{job.needed_bytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"
        )
    return job


def run(
    job: QuantizeJob,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: CancelToken | None = None,
    threads: int = 0,
) -> QuantizeResult:
    """Quantize in a child process; report ``progress(i, n, tensor)``; a set ``cancel`` ends the child.

    On success the new file is in place (renamed from the partial file); otherwise no file is left behind.
    """
    request = {
        "source": str(job.source),
        "partial": str(job.partial),
        "ftype": job.ftype,
        "requantize": job.requantize,
        "imatrix": str(job.imatrix) if job.imatrix else None,
        "threads": threads,
    }

    def on_message(message: dict) -> None:
        if "tensor" in message and progress is not None:
            progress(message["tensor"], message["of"], message["name"])

    job.partial.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        outcome = run_child("webui.lab.quantize", request, on_message, cancel)
        if outcome.cancelled:
            raise QuantizeCancelled("quantization cancelled; no file was written")
        report = outcome.last("ok")
        if outcome.code != 0 or not report.get("ok"):
            why = report.get("error") or outcome.why()
            tail = "\n".join(outcome.log[-8:])
            raise QuantizeError(
                f"llama.cpp could not quantize {job.source.name}: {why}" + (f"\n{tail}" if tail else "")
            )
        os.replace(job.partial, job.target)
    finally:
        job.partial.unlink(missing_ok=True)
    return QuantizeResult(
        job.target, job.qtype, job.target.stat().st_size, time.perf_counter() - start, job.source.stat().st_size,
        job.warnings, "\n".join(outcome.log[-4:]),
    )  # fmt: skip


# -- the child process ----------------------------------------------------------------------------


def load_imatrix(path: Path) -> dict:
    """An importance matrix in llama.cpp's GGUF format (``llama-imatrix``'s output): per tensor, the mean
    squared activations (``in_sum2 / counts`` per expert, float32 numpy arrays), as ``llama-quantize`` does."""
    import numpy as np
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:
        raise QuantizeError(
            f"{path.name} is not an importance matrix in GGUF form ({exc}); the legacy .dat form is not read"
        ) from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    found = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        counts = tensors.get(f"{base}.counts")
        if counts is None or counts.size == 0:
            continue
        per = sums.size // counts.size
        values = np.ones_like(sums)
        for j, count in enumerate(counts):
            if count > 0:
                values[j * per : (j + 1) * per] = sums[j * per : (j + 1) * per] / count
        found[base] = values
    if not found:
        raise QuantizeError(f"{path.name} holds no importance matrix entries (*.in_sum2 with *.counts)")
    return found


def _child(request: dict) -> int:
    """Runs in the child: quantize ``source`` to ``partial``, printing progress and a final ``{"ok": ...}``."""
    import llama_cpp

    @llama_cpp.llama_log_callback
    def on_log(level, text, user_data):  # one piece of a line at a time
        piece = text.decode("utf-8", errors="replace") if text else ""
        found = PROGRESS.search(piece)
        if found:
            emit({"tensor": int(found.group(1)), "of": int(found.group(2)), "name": found.group(3)})
        elif level in (3, 4) or "error" in piece.lower():  # GGML_LOG_LEVEL_WARN, _ERROR, or an error line
            sys.stdout.write(piece if piece.endswith("\n") else piece + "\n")
            sys.stdout.flush()

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = request["ftype"]
    params.nthread = int(request.get("threads") or 0)
    params.allow_requantize = bool(request["requantize"])
    keep = []  # the imatrix buffers must outlive the call
    if request.get("imatrix"):
        try:
            entries = load_imatrix(Path(request["imatrix"]))
        except QuantizeError as exc:
            emit({"ok": False, "error": str(exc)})
            return 1
        table = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, values) in enumerate(entries.items()):
            encoded = name.encode("utf-8")
            keep += [values, encoded]
            pointer = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            table[i].name, table[i].data, table[i].size = encoded, pointer, values.size
        table[len(entries)].name = None
        params.imatrix = table
        keep.append(table)
    code = llama_cpp.llama_model_quantize(
        request["source"].encode("utf-8"), request["partial"].encode("utf-8"), ctypes.byref(params)
    )
    emit({"ok": code == 0, "error": "" if code == 0 else f"llama_model_quantize returned {code}"})
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.argv[1])))
