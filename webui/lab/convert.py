"""A Hugging Face safetensors folder to GGUF with llama.cpp's own ``convert_hf_to_gguf.py``.

We do not write a converter. llama.cpp's converter is not in llama-cpp-python's wheel nor in the ``gguf``
package (only its library, ``gguf-py``, is); it ships in llama-cpp-python's *source* distribution, under
``vendor/llama.cpp/``: ``convert_hf_to_gguf.py``, its ``conversion/`` package and ``gguf-py/``. So the
converter is fetched once with pip (``pip download --no-binary :all: llama-cpp-python==<the installed
version>``: the same llama.cpp commit as the library that will load the result), those files are unpacked
into a cache folder, and the converter runs there as its own process. ``INGLENOOK_LLAMA_CPP`` may point at
a llama.cpp checkout instead (no download). The converter needs torch, numpy and sentencepiece.

The output is written to a hidden partial file and renamed when the converter succeeds; a cancel or a
failure removes it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from backends.base import CancelToken
from webui.lab.child import run_command
from webui.lab.quantize import free_bytes
from webui.paths import UnsafeName, inside

SCRIPT = "convert_hf_to_gguf.py"
KEEP = (SCRIPT, "conversion/", "gguf-py/", "LICENSE")  # what the converter needs from vendor/llama.cpp/
MARGIN_BYTES = 64 * 2**20
CONVERT_TIMEOUT_S = 3600.0


class ConvertError(ValueError):
    """The folder cannot be converted, or the converter cannot be had or failed; the message says why."""


def cache_root() -> Path:
    """Where fetched tools live: ``$INGLENOOK_CACHE`` or ``~/.cache/inglenook``."""
    return Path(os.environ.get("INGLENOOK_CACHE") or Path.home() / ".cache" / "inglenook")


def _llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def converter_script(root: Path | None = None, fetch: bool = True, say: Callable[[str], None] | None = None) -> Path:
    """The path of ``convert_hf_to_gguf.py``: from ``$INGLENOOK_LLAMA_CPP``, the cache, or fetched with pip."""
    checkout = os.environ.get("INGLENOOK_LLAMA_CPP")
    if checkout:
        script = Path(checkout) / SCRIPT
        if not script.is_file():
            raise ConvertError(f"INGLENOOK_LLAMA_CPP={checkout} has no {SCRIPT}")
        return script
    version = _llama_cpp_version()
    folder = (root or cache_root()) / f"llama.cpp-{version}"
    if (folder / SCRIPT).is_file():
        return folder / SCRIPT
    if not fetch:
        raise ConvertError(f"llama.cpp's converter is not in {folder}")
    (say or (lambda _m: None))(f"fetching llama.cpp's converter (llama-cpp-python {version} source) with pip ...")
    _fetch(version, folder)
    return folder / SCRIPT


def _fetch(version: str, folder: Path) -> None:
    """``pip download`` the sdist, unpack only the converter's files into ``folder`` (atomically)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inglenook-sdist-", dir=folder.parent) as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", tmp],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise ConvertError(
                f"could not fetch llama-cpp-python {version}'s source with pip (the converter ships only there): "
                f"{(done.stderr or done.stdout).strip()[-400:]}"
            )
        staged = Path(tmp) / "converter"
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                rel = _converter_member(member)
                if rel is None:
                    continue
                target = staged / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is not None:
                    target.write_bytes(source.read())
        if not (staged / SCRIPT).is_file():
            raise ConvertError(f"llama-cpp-python {version}'s source has no vendor/llama.cpp/{SCRIPT}")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staged, folder)


def _converter_member(member: tarfile.TarInfo) -> str | None:
    """The path under vendor/llama.cpp/ of a regular file the converter needs, or None (links, other files)."""
    if not member.isfile():
        return None
    parts = member.name.split("/")
    if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"] or ".." in parts:
        return None
    rel = "/".join(parts[3:])
    return rel if any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP) else None


def outtypes(script: Path) -> list[str]:
    """The ``--outtype`` choices of this converter (read from its own argument parser)."""
    found = re.search(r'"--outtype".*?choices=\[([^\]]*)\]', script.read_text(encoding="utf-8"), re.S)
    return re.findall(r'"([^"]+)"', found.group(1)) if found else ["f32", "f16", "bf16", "q8_0"]


def convert(
    folder: Path,
    models_dir: Path,
    outtype: str = "f16",
    out: str | None = None,
    progress: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
    root: Path | None = None,
) -> Path:
    """Convert the model folder to ``models_dir/NAME.gguf``; return its path."""
    say = progress or (lambda _m: None)
    if not (folder / "config.json").is_file():
        raise ConvertError(f"{folder} is not a Hugging Face model folder (no config.json)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ConvertError(f"{folder} has no *.safetensors weights (pickle *.bin files are not converted)")
    name = out or f"{folder.name}-{outtype.upper()}.gguf"
    if not name.lower().endswith(".gguf"):
        name += ".gguf"
    try:
        target = inside(models_dir, name, "output name")
    except UnsafeName as exc:
        raise ConvertError(str(exc)) from None
    if target.exists():
        raise ConvertError(f"{target.name} already exists in {models_dir}; choose another --out name")
    models_dir.mkdir(parents=True, exist_ok=True)
    needed = sum(w.stat().st_size for w in weights) * (2 if outtype == "f32" else 1) + MARGIN_BYTES
    if free_bytes(models_dir) < needed:
        raise ConvertError(f"not enough disk space in {models_dir}: up to {needed / 2**20:.0f} MiB needed")
    script = converter_script(root, say=say)
    choices = outtypes(script)
    if outtype not in choices:
        raise ConvertError(f"unknown --outtype {outtype!r}; llama.cpp's converter offers: {', '.join(choices)}")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    say(f"converting {folder.name} -> {target.name} ({outtype}) with {script}")
    try:
        outcome = run_command(
            [sys.executable, str(script), str(folder), "--outfile", str(partial), "--outtype", outtype],
            cancel=cancel, timeout_s=CONVERT_TIMEOUT_S, on_line=lambda line: say(line[-200:]),
        )  # fmt: skip
        if outcome.cancelled:
            raise ConvertError("conversion cancelled; no file was written")
        if outcome.code != 0 or not partial.is_file():
            tail = "\n".join(outcome.log[-6:])
            raise ConvertError(f"llama.cpp's converter failed on {folder.name}: {outcome.why()}\n{tail}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
