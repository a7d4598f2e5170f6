"""The model catalog: what is in the models folder, grouped by model, with the facts people choose by.

A *variant* is one loadable thing (a GGUF file, a Hugging Face folder, a GPTQ folder); a *model* is the
variants that differ only by quantization (``foo.Q4_K_M.gguf``, ``foo-Q8_0.gguf`` and a ``foo-GPTQ``
folder are one model). Facts come from the files themselves, never from their names: GGUF headers go
through :func:`backends.gguf_file.read_header` (bounded: a hostile header is an error on that variant, not
a crash), folders through ``config.json`` and the safetensors headers (also bounded). Nothing here loads
weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from backends.registry import LoaderRegistry
from backends.remote import NAME as REMOTE_LOADER
from webui.models.facts import (
    FOLDER_QUANT_SUFFIX,
    GGUF_QUANT_SUFFIX,
    Facts,
    jsonable,
    path_size,
    read_facts,
    read_json,
)
from webui.models.memory import estimate_memory
from webui.models.remotes import Remotes


@dataclass
class Variant:
    """One loadable file or folder in the models folder."""

    name: str  # its name inside the models folder: what `--model` and the API accept
    path: Path
    kind: str  # "gguf", "hf" or "gptq"
    size: int
    model: str  # the model it belongs to (its name without the quantization)
    facts: Facts | None = None
    error: str = ""  # why it cannot be used (the facts could not be read)
    warnings: list[str] = field(default_factory=list)

    @property
    def quantization(self) -> str:
        return self.facts.quantization if self.facts else ""

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "size": self.size,
            "model": self.model,
            "quantization": self.quantization,
            "facts": jsonable(asdict(self.facts)) if self.facts else None,
            "error": self.error or None,
            "warnings": self.warnings,
        }


@dataclass
class CatalogModel:
    """The variants of one model (one row in the model dropdown)."""

    name: str
    variants: list[Variant]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


@dataclass
class LoaderOption:
    name: str
    unavailable: str = ""  # why it cannot run here (a missing dependency), or ""


def model_name(entry_name: str, is_file: bool) -> str:
    """The model a file or folder belongs to: its name without extension and quantization suffix."""
    if is_file:
        stem = entry_name[: -len(".gguf")] if entry_name.lower().endswith(".gguf") else entry_name
        base = GGUF_QUANT_SUFFIX.sub("", stem)
    else:
        base = FOLDER_QUANT_SUFFIX.sub("", entry_name)
    return base or entry_name


# -- discovery ---------------------------------------------------------------------------------------------------
class Catalog:
    """The models folder as models and variants; facts are cached per (path, size, mtime)."""

    def __init__(self, models_dir: Path, remotes: Remotes | None = None) -> None:
        self.models_dir = models_dir
        self.remotes = remotes  # the user's remotes: their models are variants of kind "remote", after the folder's
        self._cache: dict[tuple[str, int, int], tuple[Facts | None, str, list[str]]] = {}

    def variants(self) -> list[Variant]:
        """Every GGUF file and model folder directly inside the models folder, sorted by name; then the models
        of the user's remotes (``NAME/model-id``; nothing on disk, no facts)."""
        found = self._folder_variants()
        if self.remotes is not None:
            found += [Variant(name, path, "remote", 0, name) for name, path in sorted(self.remotes.models().items())]
        return found

    def _folder_variants(self) -> list[Variant]:
        if not self.models_dir.is_dir():
            return []
        found = []
        for child in sorted(self.models_dir.iterdir(), key=lambda p: p.name.lower()):
            if child.name.startswith("."):
                continue
            if child.is_file() and child.suffix.lower() == ".gguf":
                found.append(self._variant(child, "gguf"))
            elif child.is_dir() and (child / "config.json").is_file():
                found.append(self._variant(child, _folder_kind(child)))
        return found

    def models(self) -> list[CatalogModel]:
        """Variants grouped by model name (case-insensitively), in name order."""
        groups: dict[str, CatalogModel] = {}
        for v in self.variants():
            groups.setdefault(v.model.lower(), CatalogModel(v.model, [])).variants.append(v)
        return sorted(groups.values(), key=lambda m: m.name.lower())

    def find(self, name: str) -> tuple[CatalogModel, Variant] | None:
        """The model and variant for a variant name (``foo.Q4_K_M.gguf``) or a model name (its first variant)."""
        for m in self.models():
            for v in m.variants:
                if name in (v.name, str(v.path)) or (v.kind == "gguf" and name == v.name[: -len(".gguf")]):
                    return m, v
        for m in self.models():
            if m.name.lower() == name.lower():
                return m, m.variants[0]
        return None

    def variant_at(self, path: Path) -> Variant:
        """A variant for any path (inside the models folder or not)."""
        kind = "gguf" if path.is_file() else _folder_kind(path)
        return self._variant(path, kind)

    def _variant(self, path: Path, kind: str) -> Variant:
        size = path_size(path)
        v = Variant(path.name, path, kind, size, model_name(path.name, path.is_file()))
        key = (str(path.resolve()), size, _mtime(path))
        if key not in self._cache:
            self._cache[key] = read_facts(path, kind)
        facts, v.error, v.warnings = self._cache[key]
        v.facts = facts
        return v


def _folder_kind(folder: Path) -> str:
    config = read_json(folder / "config.json", quiet=True)
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(quant, dict) and str(quant.get("quant_method", "")).lower() == "gptq":
        return "gptq"
    if (folder / "quantize_config.json").is_file():  # AutoGPTQ's older layout
        return "gptq"
    return "hf"


def _mtime(path: Path) -> int:
    if path.is_file():
        return path.stat().st_mtime_ns
    return max((f.stat().st_mtime_ns for f in path.iterdir()), default=path.stat().st_mtime_ns)


PREFERRED_LOADER = {"gguf": "llama.cpp", "hf": "transformers", "gptq": "gptq", "remote": REMOTE_LOADER}


def loader_options(registry: LoaderRegistry, path: Path) -> list[LoaderOption]:
    """Every registered loader that recognises ``path``, each with why it cannot run here (if it cannot)."""
    options = []
    for name in registry.names():
        loader = registry.get(name)
        try:
            if not loader.can_load(path):
                continue
            missing = loader.available() or ""
        except Exception as exc:  # a plugin's bug must not hide the other loaders
            missing = f"{type(exc).__name__}: {exc}"
        options.append(LoaderOption(name, missing))
    return options


def natural_loader(variant: Variant, options: list[LoaderOption]) -> str | None:
    """The loader a variant would normally use: the one made for its kind if it can run, else the first that can."""
    usable = [o.name for o in options if not o.unavailable]
    preferred = PREFERRED_LOADER.get(variant.kind)
    if preferred in usable:
        return preferred
    return usable[0] if usable else None


def variant_report(variant: Variant, registry: LoaderRegistry, n_ctx: int, available: int | None) -> dict:
    """Everything the info panel and ``inglenook models inspect --json`` show about one variant."""
    options = loader_options(registry, variant.path)
    report = variant.as_dict()
    report["loaders"] = [{"name": o.name, "available": not o.unavailable, "why_not": o.unavailable or None}
                         for o in options]  # fmt: skip
    report["loader"] = natural_loader(variant, options)
    if not options:
        report["warnings"] = [*report["warnings"], "no registered loader can load this"]
    elif report["loader"] is None:
        report["warnings"] = [*report["warnings"], "no available loader: " + "; ".join(o.unavailable for o in options)]
    report["memory"] = estimate_memory(variant.facts, n_ctx, available=available).as_dict() if variant.facts else None
    return report
