"""Installing a loader's packages from the app: ``inglenook loaders install transformers`` and the Model tab's
Install button run the same pip command, stream its lines as progress, then make the loader usable in this
process (no restart): import caches are dropped and the registry picks up any new plugin.

The packages are the ``torch`` extra of Inglenook's own metadata (pyproject.toml), so the pins live in one place.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from collections.abc import Callable

from packaging.requirements import Requirement

from backends.registry import LoaderRegistry

EXTRAS = {"transformers": "torch", "gptq": "torch"}  # loader -> the extra that brings its packages


def requirements(extra: str) -> list[str]:
    """The requirements of Inglenook's ``extra`` as pip arguments (markers dropped), from the installed metadata."""
    found = []
    for line in importlib.metadata.requires("inglenook") or []:
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": extra}):
            req.marker = None
            found.append(str(req))
    if not found:
        raise ValueError(f"inglenook's metadata has no [{extra}] extra (reinstall inglenook: pip install -e .)")
    return found


def install_command(loader: str) -> list[str]:
    if loader not in EXTRAS:
        raise ValueError(f"no install is known for loader {loader!r} (installable: {', '.join(EXTRAS)})")
    return [sys.executable, "-m", "pip", "install", "--progress-bar", "off", *requirements(EXTRAS[loader])]


def install(
    loader: str, registry: LoaderRegistry, progress: Callable[[str], None], command: list[str] | None = None
) -> str | None:
    """Install ``loader``'s packages (``command``: another pip command, for a plugin's own packages), calling
    ``progress`` with each line pip prints; then refresh ``registry``.

    Returns None when the loader is available afterwards, else why not (pip's failure or the import error).
    """
    cmd = command or install_command(loader)
    progress("$ " + " ".join(cmd[2:]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            last = line
            progress(line)
    if proc.wait() != 0:
        return f"pip failed (exit {proc.returncode}): {last}"
    importlib.invalidate_caches()  # so the packages just installed import in this process
    registry.refresh()
    if loader not in registry.names():
        return f"the install finished but no loader named {loader!r} registered"
    return registry.get(loader).available()
