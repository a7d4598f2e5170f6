"""Installing, updating and removing extensions, and undoing exactly what was installed.

A SOURCE is a git URL (cloned; the commit it got is recorded), a local folder (copied) or a pip
requirement (a name, a version range or a wheel file). Everything is staged in a temporary folder
beside ``user_data/extensions/`` and moved into place with one rename once it is known to work, so
a failure leaves nothing behind. Python requirements go into the app's own environment only after
``pip install --dry-run --report`` shows they change none of Inglenook's own dependencies. Only wheels are
accepted (``--only-binary :all:``, and a direct reference must name a ``.whl``): building a source
distribution runs its ``setup.py``, which would run the extension's code before anyone agreed to it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from webui import hookspecs
from webui.extensions.host import ExtensionError, ExtensionHost
from webui.extensions.manifest import Manifest, ManifestError, read_manifest, requirement_problems
from webui.paths import inside

log = logging.getLogger(__name__)

GIT_PREFIXES = ("http://", "https://", "git://", "ssh://", "file://", "git@")
PIP_TIMEOUT_S = 900
GIT_TIMEOUT_S = 300
OWN_PROJECT = "inglenook"

RIGHTS_WARNING = (
    "An extension is Python code that runs inside Inglenook with the app's full rights: it can read your "
    "chats and files and reach the network. Install only extensions you trust."
)


class InstallError(ValueError):
    """An install, update or remove that was refused or failed; nothing was left half-done."""


def classify(source: str) -> str:
    """'git', 'folder' or 'pip' for an install SOURCE; InstallError if it is none of them."""
    source = source.strip()
    if not source:
        raise InstallError("give a git URL, a folder or a pip requirement to install")
    if source.startswith(GIT_PREFIXES) or source.endswith(".git"):
        return "git"
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder"
    if source.endswith(".whl"):
        if not path.is_file():
            raise InstallError(f"no wheel file {source}")
        return "pip"
    if source.startswith((".", "/", "~")) or os.sep in source:
        raise InstallError(f"no folder {source}")
    try:
        Requirement(source)
    except InvalidRequirement as exc:
        raise InstallError(f"{source!r} is not a git URL, a folder or a pip requirement ({exc})") from None
    return "pip"


def install(host: ExtensionHost, source: str) -> list[str]:
    """Install ``source``, enable it and record what was done; returns the extension name(s)."""
    host.discover()
    kind = classify(source)
    if kind == "pip":
        return _install_pip(host, source)
    host.installed_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=host.installed_dir) as staging:
        staged, commit = _fetch(kind, source, Path(staging))
        manifest = _check_manifest(staged, _default_name(source))
        if manifest.name in _known_names(host):
            raise InstallError(
                f"an extension named {manifest.name!r} is already installed: use 'update' or 'remove' first"
            )
        target = inside(host.installed_dir, manifest.name, "extension name")
        added = _pip_install(list(manifest.python), f"extension {manifest.name}")
        try:
            staged.rename(target)  # one atomic step: the extension is there whole, or not at all
        except OSError as exc:
            _pip_uninstall(added)
            raise InstallError(f"cannot move {manifest.name} into {host.installed_dir}: {exc}") from None
    record = {"source": kind, "origin": _origin(kind, source), "commit": commit, "pip_added": added}
    _record(host, manifest.name, record)
    host.discover()
    return [manifest.name]


def update(host: ExtensionHost, name: str) -> str:
    """Fetch ``name`` again from where it was installed from; returns a one-line summary."""
    host.discover()
    record = host.record(name)
    if not record:
        host.get(name)  # unknown names get the usual message
        raise InstallError(f"{name} was not installed with 'inglenook extensions install'; nothing to update from")
    if record["source"] == "pip":
        before = importlib.metadata.version(record["package"])
        added = _pip_install([record["origin"]], name, upgrade=True)
        after = importlib.metadata.version(record["package"])
        _record(host, name, {**record, "pip_added": sorted({*record["pip_added"], *added})})
        return f"{name}: {before} -> {after}" if before != after else f"{name} is up to date ({after})"
    target = inside(host.installed_dir, name, "extension name")
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=host.installed_dir) as staging:
        staged, commit = _fetch(record["source"], record["origin"], Path(staging))
        manifest = _check_manifest(staged, name)
        if manifest.name != name:
            raise InstallError(f"the source now holds extension {manifest.name!r}, not {name!r}; not updated")
        added = _pip_install(list(manifest.python), f"extension {name}")
        old = Path(staging) / "old"
        target.rename(old)
        staged.rename(target)
    _record(host, name, {**record, "commit": commit, "pip_added": sorted({*record["pip_added"], *added})})
    was = f" (was {record['commit'][:12]})" if record.get("commit") else ""
    return f"{name} updated to {manifest.version}" + (f" at {commit[:12]}{was}" if commit else "")


def remove(host: ExtensionHost, name: str) -> str:
    """Disable ``name`` and undo its install: its folder, the pip packages it added, its settings and data."""
    host.discover()
    record = host.record(name)
    ext = None
    try:
        ext = host.get(name)
    except ExtensionError:
        if not record:
            raise
    if not record:
        if ext is not None and ext.source == "bundled":
            raise InstallError(f"{name} comes with Inglenook and cannot be removed; disable it instead")
        raise InstallError(f"{name} was not installed with 'inglenook extensions install'; remove it with pip")
    if ext is not None and ext.active:
        host.disable(name)
    if record["source"] != "pip":
        folder = inside(host.installed_dir, name, "extension name")
        if folder.exists():
            trash = Path(tempfile.mkdtemp(prefix=".removing-", dir=host.installed_dir))
            folder.rename(trash / name)  # gone from discovery at once, then deleted
            shutil.rmtree(trash)
    others = {p for n, r in host.state.read()["installed"].items() if n != name for p in r.get("pip_added", [])}
    removed = _pip_uninstall([p for p in record.get("pip_added", []) if p not in others])
    data = inside(host.data_root, name, "extension name") if host.data_root.exists() else None
    if data is not None and data.exists():
        shutil.rmtree(data)

    def forget(state: dict) -> None:
        for key in ("installed", "enabled", "settings"):
            state[key].pop(name, None)

    host.state.update(forget)
    host.discover()
    return f"removed {name}" + (f" and pip packages {', '.join(removed)}" if removed else "")


# --------------------------------------------------------------------------- fetching


def _fetch(kind: str, source: str, staging: Path) -> tuple[Path, str]:
    """The extension copied or cloned into ``staging/src``, and the commit for git."""
    staged = staging / "src"
    if kind == "folder":
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise InstallError(f"no folder {source}")
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"), symlinks=True)
        return staged, ""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    try:
        done = subprocess.run(
            ["git", "clone", "--quiet", "--", source, str(staged)],
            capture_output=True, text=True, timeout=GIT_TIMEOUT_S, env=env,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"git clone {source} failed: {exc}") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InstallError(f"git clone {source} failed: {why}")
    commit = subprocess.run(
        ["git", "-C", str(staged), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    return staged, commit


def _check_manifest(folder: Path, fallback_name: str) -> Manifest:
    try:
        manifest = read_manifest(folder, fallback_name)
    except ManifestError as exc:
        raise InstallError(str(exc).replace(str(folder), "the source")) from None
    problems = [p for p in requirement_problems(manifest) if p.startswith("needs Inglenook")]
    if problems:
        raise InstallError(f"{manifest.name} {problems[0]}")
    return manifest


def _default_name(source: str) -> str:
    last = source.rstrip("/").rsplit("/", 1)[-1]
    return last.removesuffix(".git") or "extension"


def _origin(kind: str, source: str) -> str:
    return str(Path(source).expanduser().resolve()) if kind == "folder" else source


def _known_names(host: ExtensionHost) -> set[str]:
    return {e.name for e in host.list()} | set(host.state.read()["installed"])


def _record(host: ExtensionHost, name: str, record: dict) -> None:
    record = {**record, "installed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def change(state: dict) -> None:
        state["installed"][name] = record
        state["enabled"][name] = True

    host.state.update(change)


# --------------------------------------------------------------------------- pip


def _install_pip(host: ExtensionHost, requirement: str) -> list[str]:
    plan = pip_plan([requirement])
    if not plan:
        raise InstallError(f"{requirement} is already installed in this environment; enable it by its name instead")
    added = _pip_install([requirement], requirement, plan=plan)
    planned = {name for name, _ in plan}
    found = [
        (ep.name, ep.dist.name) for ep in _entry_points() if ep.dist and canonicalize_name(ep.dist.name) in planned
    ]
    if not found:
        _pip_uninstall(added)
        raise InstallError(f"{requirement} has no entry point in group {hookspecs.PROJECT}: not an Inglenook extension")
    taken = sorted({name for name, _ in found} & set(host.state.read()["installed"]))
    if taken:
        _pip_uninstall(added)
        raise InstallError(f"an extension named {taken[0]!r} is already installed: use 'update' or 'remove' first")
    for name, package in found:
        record = {"source": "pip", "origin": requirement, "package": package, "commit": "", "pip_added": added}
        _record(host, name, record)
    host.discover()
    return [name for name, _ in found]


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    importlib.invalidate_caches()  # pip ran in another process: look at site-packages afresh
    return importlib.metadata.entry_points(group=hookspecs.PROJECT)


def _installed_version(name: str) -> str | None:
    importlib.invalidate_caches()
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


WHEELS_ONLY = ["--only-binary", ":all:"]


def needs_building(requirement: str) -> str | None:
    """Why ``requirement`` would have to be built from source (running its setup.py), or None for an index
    requirement or a wheel. pip's ``--only-binary`` does not cover direct references (``name @ URL``), so
    they are checked here; anything that is not a plain requirement or a wheel file is refused as well."""
    text = requirement.strip()
    if text.endswith(".whl") and not text.startswith("-") and "@" not in text:
        return None  # a wheel file given by path (`extensions install x.whl`)
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        return f"{requirement!r} is not a pip requirement ({exc})"
    if req.url and not req.url.split("#", 1)[0].split("?", 1)[0].endswith(".whl"):
        return f"{req.name} @ {req.url} is not a wheel: it would need building (running its setup.py)"
    return None


def pip_plan(requirements: list[str], upgrade: bool = False) -> list[tuple[str, str]]:
    """(name, version) of every package ``pip install`` would install or change, from a dry run that only
    looks at wheels (so no package's code runs); InstallError naming a requirement that would need building."""
    for requirement in requirements:
        if why := needs_building(requirement):
            raise InstallError(f"refused: {why}. Only wheels are installed for extensions. Nothing was installed.")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", *WHEELS_ONLY]
    command += ["--disable-pip-version-check", *(["--upgrade"] if upgrade else []), *requirements]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"pip could not be run: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else "no output")
        raise InstallError(
            f"pip cannot install {' '.join(requirements)} from wheels: {why.removeprefix('ERROR: ')} "
            "(a requirement with no wheel for this machine would need building, which is refused)"
        )
    report = json.loads(done.stdout)
    return [(canonicalize_name(i["metadata"]["name"]), i["metadata"]["version"]) for i in report.get("install", [])]


def protected_packages() -> dict[str, str]:
    """Inglenook and every package it depends on (recursively), with the installed versions."""
    environment = {**default_environment(), "extra": ""}
    found: dict[str, str] = {}
    todo = [OWN_PROJECT]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = dist.version
        for text in dist.requires or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is None or req.marker.evaluate(environment):
                todo.append(req.name)
    return found


def conflicts(plan: list[tuple[str, str]]) -> list[str]:
    """The changes in ``plan`` to packages Inglenook itself uses, as readable lines."""
    protected = protected_packages()
    return [
        f"{name} {protected[name]} -> {version}"
        for name, version in plan
        if name in protected and version != protected[name]
    ]


def _pip_install(
    requirements: list[str], what: str, upgrade: bool = False, plan: list[tuple[str, str]] | None = None
) -> list[str]:
    """Install ``requirements`` if the dry run changes no protected package; returns the packages it added."""
    if not requirements:
        return []
    plan = plan if plan is not None else pip_plan(requirements, upgrade)
    changed = conflicts(plan)
    if changed:
        raise InstallError(
            f"refused: {what} needs {', '.join(requirements)}, which would change Inglenook's own dependencies "
            f"({'; '.join(changed)}). Nothing was installed."
        )
    new = [name for name, _ in plan if _installed_version(name) is None]
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *WHEELS_ONLY]
    command += [*(["--upgrade"] if upgrade else []), *requirements]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    if done.returncode != 0:
        _pip_uninstall([n for n in new if _installed_version(n) is not None])
        raise InstallError(f"pip install {' '.join(requirements)} failed: {done.stderr.strip()[-500:]}")
    log.info("pip installed %s for %s", ", ".join(f"{n}=={v}" for n, v in plan), what)
    return new


def _pip_uninstall(packages: list[str]) -> list[str]:
    packages = [p for p in packages if _installed_version(p) is not None]
    if packages:
        command = [sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*command, *packages], capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    return packages
