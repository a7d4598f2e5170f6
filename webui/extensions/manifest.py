"""Extension manifests: ``extension.yaml`` (or a text-generation-webui ``script.py`` folder, or a pip entry
point's metadata) read into a :class:`Manifest`, and the check of what it requires against this install."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from webui import __version__
from webui.paths import UnsafeName, safe_name

MANIFEST = "extension.yaml"
TGW_SCRIPT = "script.py"
DEFAULT_PRIORITY = 100
REQUIRED_FIELDS = ("name", "version", "description")


class ManifestError(ValueError):
    """An extension.yaml that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str
    author: str = ""
    homepage: str = ""
    inglenook: str = ""  # a version range such as ">=0.1,<1"; empty = any
    python: tuple[str, ...] = ()  # pip requirements
    priority: int = DEFAULT_PRIORITY  # lower runs earlier
    module: str = "extension.py"
    kind: str = "inglenook"  # or "tgw": a text-generation-webui script.py


def check_name(name: Any) -> str:
    """An extension name: a plain, portable folder name, lower-case letters, digits, '-' and '_'."""
    if not isinstance(name, str):
        raise ManifestError(f"the extension name must be text, not {type(name).__name__}")
    try:
        safe_name(name, "extension name")
    except UnsafeName as exc:
        raise ManifestError(str(exc)) from None
    if not (name[0].isalnum() and all(c.isalnum() or c in "-_" for c in name) and name == name.lower()):
        raise ManifestError(f"extension name {name!r} may hold only lower-case letters, digits, '-' and '_'")
    return name


def parse_manifest(data: Any, where: str) -> Manifest:
    """Check an extension.yaml's content; ManifestError says what is wrong and where."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a mapping of fields (name, version, description, …)")
    missing = [f for f in REQUIRED_FIELDS if not str(data.get(f) or "").strip()]
    if missing:
        raise ManifestError(f"{where}: missing required field(s): {', '.join(missing)}")
    try:
        name = check_name(data["name"])
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    requires = data.get("requires") or {}
    if not isinstance(requires, dict):
        raise ManifestError(f"{where}: 'requires' must be a mapping with 'inglenook' and/or 'python'")
    inglenook = str(requires.get("inglenook") or "").strip()
    try:
        SpecifierSet(inglenook)
    except InvalidSpecifier:
        problem = f"requires.inglenook {inglenook!r} is not a version range like '>=0.1,<1'"
        raise ManifestError(f"{where}: {problem}") from None
    python = requires.get("python") or []
    if isinstance(python, str):
        python = [python]
    if not isinstance(python, list):
        raise ManifestError(f"{where}: requires.python must be a list of pip requirements")
    for req in python:
        try:
            Requirement(str(req))
        except InvalidRequirement as exc:
            raise ManifestError(f"{where}: requirement {req!r} is not valid: {exc}") from None
    module = str(data.get("module") or "extension.py")
    try:
        safe_name(module, "module")
    except UnsafeName as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if not module.endswith(".py"):
        raise ManifestError(f"{where}: module {module!r} must be a .py file in the extension's folder")
    priority = data.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ManifestError(f"{where}: priority must be a whole number (lower runs earlier)")
    return Manifest(
        name=name,
        version=str(data["version"]),
        description=str(data["description"]).strip(),
        author=str(data.get("author") or ""),
        homepage=str(data.get("homepage") or ""),
        inglenook=inglenook,
        python=tuple(str(r) for r in python),
        priority=priority,
        module=module,
        kind="tgw" if module == TGW_SCRIPT and data.get("tgw", True) else "inglenook",
    )


def read_manifest(folder: Path, fallback_name: str | None = None) -> Manifest:
    """The manifest of an extension folder: its extension.yaml, or one made up for a text-generation-webui
    folder that has only a ``script.py`` (named ``fallback_name`` or after the folder)."""
    path = folder / MANIFEST
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ManifestError(f"{path}: cannot be read: {exc}") from None
        manifest = parse_manifest(data, str(path))
        if not (folder / manifest.module).is_file():
            raise ManifestError(f"{path}: its module {manifest.module} is missing")
        return manifest
    if (folder / TGW_SCRIPT).is_file():
        name = (fallback_name or folder.name).lower().replace(" ", "_")
        return parse_manifest(
            {"name": name, "version": "0", "description": "a text-generation-webui extension", "module": TGW_SCRIPT},
            str(folder / TGW_SCRIPT),
        )
    raise ManifestError(f"{folder} has no {MANIFEST} (nor a text-generation-webui {TGW_SCRIPT}): not an extension")


def requirement_problems(manifest: Manifest) -> list[str]:
    """What in the manifest's ``requires`` this installation does not satisfy."""
    problems = []
    if manifest.inglenook and Version(__version__) not in SpecifierSet(manifest.inglenook):
        problems.append(f"needs Inglenook {manifest.inglenook}, this is {__version__}")
    for text in manifest.python:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"needs {text} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"needs {text} ({req.name} {have} is installed)")
    return problems


def entry_point_manifest(ep: importlib.metadata.EntryPoint) -> Manifest:
    dist = ep.dist
    meta = dist.metadata if dist is not None else {}
    homepage = meta.get("Home-page") or ""
    for url in meta.get_all("Project-URL") or [] if dist is not None else []:
        homepage = homepage or url.split(",", 1)[-1].strip()
    return parse_manifest(
        {
            "name": ep.name,
            "version": dist.version if dist is not None else "?",
            "description": meta.get("Summary") or f"pip package {dist.name if dist else ep.value}",
            "author": meta.get("Author") or meta.get("Author-email") or "",
            "homepage": homepage,
        },
        f"entry point {ep.name} = {ep.value}",
    )
