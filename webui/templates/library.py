"""The prompt-template files on disk: the library in ``presets/templates/`` and the rules in ``presets/models.yaml``.

Templates are text-generation-webui instruction-template YAML files (a top-level
``instruction_template: |-`` key holding Jinja over ``messages``), so files from
that project load as they are. This module only finds and reads files; rendering
and choosing live in :mod:`webui.templates.render`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from backends.base import ModelInfo
from backends.gguf_file import read_header
from webui.paths import inside, safe_name

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
TEMPLATE_KEY = "instruction_template"


class TemplateFileError(ValueError):
    """A template file or rules file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TemplateFile:
    """One template: its name (the file stem), its Jinja text and where it came from."""

    name: str
    text: str
    source: str


@dataclass(frozen=True)
class Rule:
    """A ``presets/models.yaml`` rule: regexes on the model name / architecture → a template and default settings."""

    template: str
    name: str | None = None
    architecture: str | None = None
    settings: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How the rule is shown to the user: its pattern(s)."""
        parts = [
            f"name ~ {self.name}" if self.name else "",
            f"architecture ~ {self.architecture}" if self.architecture else "",
        ]
        return "; ".join(p for p in parts if p)

    def matches(self, model_name: str, architecture: str) -> bool:
        checks = [(self.name, model_name), (self.architecture, architecture)]
        return all(re.search(pattern, value, re.IGNORECASE) for pattern, value in checks if pattern)


def load_template_file(path: Path) -> TemplateFile:
    """Read one instruction-template YAML file; raise TemplateFileError naming the file if it is not one."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TemplateFileError(f"template file {path} cannot be read: {exc}") from None
    text = data.get(TEMPLATE_KEY) if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise TemplateFileError(f"template file {path} has no '{TEMPLATE_KEY}:' text")
    return TemplateFile(path.stem, text, str(path))


def templates_dir(presets: Path = PRESETS_DIR) -> Path:
    return presets / "templates"


def template_names(presets: Path = PRESETS_DIR) -> list[str]:
    """Names of the templates in the library, sorted case-insensitively."""
    folder = templates_dir(presets)
    if not folder.is_dir():
        return []
    return sorted((p.stem for p in folder.glob("*.yaml") if not p.name.startswith(".")), key=str.lower)


def list_templates(presets: Path = PRESETS_DIR) -> list[TemplateFile]:
    """Every template in the library (a broken file raises, naming itself)."""
    return [get_template(name, presets) for name in template_names(presets)]


def get_template(name: str, presets: Path = PRESETS_DIR) -> TemplateFile:
    """The library template called ``name`` (case-insensitive); the name is validated before it touches the disk."""
    safe_name(name, "template name")
    folder = templates_dir(presets)
    wanted = next((n for n in template_names(presets) if n == name), None)
    wanted = wanted or next((n for n in template_names(presets) if n.lower() == name.lower()), None)
    if wanted is None:
        known = ", ".join(template_names(presets)) or "none"
        raise TemplateFileError(f"no template named {name!r} in {folder} (known: {known})")
    return load_template_file(inside(folder, f"{wanted}.yaml", "template name"))


def load_rules(presets: Path = PRESETS_DIR) -> list[Rule]:
    """The rules of ``presets/models.yaml`` in file order; no file means no rules."""
    path = presets / "models.yaml"
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TemplateFileError(f"{path} cannot be read: {exc}") from None
    items = data.get("rules", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise TemplateFileError(f"{path}: 'rules:' must be a list")
    return [_rule(item, path, i) for i, item in enumerate(items, 1)]


def _rule(item: object, path: Path, number: int) -> Rule:
    where = f"{path} rule {number}"
    if not isinstance(item, dict) or not isinstance(item.get("template"), str):
        raise TemplateFileError(f"{where} needs a 'template:' name")
    name, arch, settings = item.get("name"), item.get("architecture"), item.get("settings") or {}
    if not name and not arch:
        raise TemplateFileError(f"{where} needs a 'name:' or 'architecture:' pattern")
    for pattern in (name, arch):
        if pattern is None:
            continue
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise TemplateFileError(f"{where} has a bad regular expression {pattern!r}: {exc}") from None
    if not isinstance(settings, dict):
        raise TemplateFileError(f"{where}: 'settings:' must be a mapping")
    safe_name(item["template"], f"template name in {where}")
    return Rule(item["template"], str(name) if name else None, str(arch) if arch else None, settings)


def model_template_info(path: Path) -> ModelInfo:
    """What a model file or folder says about its prompt format, read without loading any weights.

    A GGUF file: its header (architecture, ``tokenizer.chat_template``). A Hugging Face folder:
    ``chat_template.jinja`` or ``tokenizer_config.json`` and ``config.json``'s ``model_type``.
    """
    if path.is_file():
        header = read_header(path)
        return ModelInfo(path.stem, "gguf", str(path), header.architecture, chat_template=header.chat_template)
    config = _json(path / "config.json")
    tokenizer = _json(path / "tokenizer_config.json")
    template = tokenizer.get("chat_template")
    if isinstance(template, list):  # named templates: the "default" one is the chat template
        template = next(
            (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
        )
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return ModelInfo(
        path.name,
        "folder",
        str(path),
        str(config.get("model_type", "")),
        chat_template=template if isinstance(template, str) else None,
        bos_token=_token_text(tokenizer.get("bos_token")),
        eos_token=_token_text(tokenizer.get("eos_token")),
    )


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TemplateFileError(f"{path} cannot be read: {exc}") from None
    return data if isinstance(data, dict) else {}


def _token_text(token: object) -> str:
    if isinstance(token, dict):  # {"content": "<s>", ...} in older tokenizer_config.json files
        token = token.get("content")
    return token if isinstance(token, str) else ""
