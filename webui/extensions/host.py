"""The extension host: finds extensions, keeps their state, and runs their hooks in order, in isolation.

Sources: folders with an ``extension.yaml`` (bundled ones in the repository's ``extensions/``, installed
ones in ``user_data/extensions/``), text-generation-webui ``script.py`` folders (through
:mod:`webui.extensions.tgw`), and pip packages exposing the entry point group ``inglenook.extensions``.

Nothing runs until the user enables it (``inglenook extensions install`` enables what it installs).
An extension that fails to import, raises in a hook, returns the wrong type or does not return
within ``timeout_s`` is disabled for this run with its error recorded (shown in the Extensions tab
and logged); the value it was given passes on unchanged, so the chat never sees its traceback.

An installed extension is first imported in a process of its own (:data:`IMPORT_CHECK`), all of them at
once: one that hangs or loops at import is ended there and never imported here, where a looping thread
could not be stopped. Startup hooks run after ``start()`` returns, so a hung one delays nothing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import pluggy

from backends.base import SamplingParams, Usage
from webui import hookspecs
from webui.chat.tools import ToolError, parse_tools
from webui.extensions.manifest import (  # ManifestError, parse_manifest, read_manifest: re-exported for callers
    MANIFEST,
    TGW_SCRIPT,
    Manifest,
    ManifestError,
    entry_point_manifest,
    parse_manifest,
    read_manifest,
    requirement_problems,
)
from webui.extensions.state import StateFile
from webui.hookspecs import SETTING_TYPES, ChatHooks, Context, ExtensionTool, ReplyInfo, Setting

__all__ = ["ExtensionError", "ExtensionHost", "Manifest", "ManifestError", "parse_manifest", "read_manifest",
           "requirement_problems"]  # fmt: skip

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parents[2] / "extensions"
DEFAULT_TIMEOUT_S = 30.0
SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # so the checking process imports this webui
# Run as `python -c IMPORT_CHECK ROOT KIND MODULE_NAME TARGET FOLDER`: imports the extension as the host would.
IMPORT_CHECK = """
import importlib, importlib.util, sys
root, kind, name, target, folder = sys.argv[1:6]
sys.path.insert(0, root)
try:
    if kind == "module":
        importlib.import_module(target)
    else:
        spec = importlib.util.spec_from_file_location(name, target, submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
except BaseException as exc:
    print(f"{type(exc).__name__}: {exc}", flush=True)
    sys.exit(3)
print("ok", flush=True)
"""


class ExtensionError(ValueError):
    """A request about an extension that cannot be done (unknown name, already enabled, …)."""


# --------------------------------------------------------------------------- the host


@dataclass
class HookTiming:
    calls: int = 0
    total_s: float = 0.0
    max_s: float = 0.0


@dataclass
class Extension:
    """One extension the host knows of, enabled or not."""

    manifest: Manifest
    source: str  # "bundled", "installed", "pip"
    path: Path | None = None  # its folder (None for pip packages)
    enabled: bool = False  # what the user chose (saved)
    active: bool = False  # its hooks run now
    error: str = ""  # why it is not active although enabled
    ui_built: bool = False  # its ui hook ran when the page was built
    setting_specs: list[Setting] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, HookTiming] = field(default_factory=dict)
    plugin: Any = None
    css: str = ""
    js: str = ""
    entry_point: Any = None
    on_settings: Callable[[dict[str, Any]], None] | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.active:
            return "enabled"
        return "disabled"


class _HookFailed(Exception):
    pass


class ExtensionHost(ChatHooks):
    """Every extension of one App, and the hook calls of the chat path."""

    def __init__(
        self,
        user_data: Path,
        bundled_dir: Path | None = BUNDLED_DIR,
        entry_points: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.user_data = Path(user_data)
        self.installed_dir = self.user_data / "extensions"
        self.data_root = self.user_data / "extension_data"
        self.bundled_dir = bundled_dir
        self.use_entry_points = entry_points
        self.timeout_s = timeout_s
        self.state = StateFile(self.user_data / "extensions.json")
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._lock = threading.RLock()
        self._extensions: dict[str, Extension] = {}
        self.problems: list[str] = []  # found but unusable (a bad manifest, a name taken twice)

    # -- discovery and state -----------------------------------------------------------
    def start(self) -> None:
        """Find every extension and activate the enabled ones. Never raises because of an extension, and
        waits for none longer than ``timeout_s``: the import checks run side by side, the startup hooks after
        this returns (on a thread of their own)."""
        self.discover()
        enabled = [ext for ext in self.list() if ext.enabled]
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="extension-import-check") as pool:
            errors = list(pool.map(self._check_import, enabled))
        started = []
        for ext, error in zip(enabled, errors, strict=True):
            if error:
                self._fail(ext, error)
            elif self._activate(ext, checked=True, startup=False):
                started.append(ext)
        if started:
            threading.Thread(target=self._startups, args=(started,), name="extension-startups", daemon=True).start()

    def _startups(self, started: list[Extension]) -> None:
        for ext in started:
            if ext.active:
                try:
                    self._call_plain(ext, "startup", {})
                except _HookFailed:
                    continue

    def _check_import(self, ext: Extension) -> str:
        """Import an installed or pip extension in a process of its own first; the error ("" if none).

        Bundled extensions ship with Inglenook and are imported directly."""
        if ext.source == "bundled":
            return ""
        if ext.entry_point is not None:
            kind, target, folder = "module", ext.entry_point.module, ""
        else:
            kind, target, folder = "file", str(ext.path / ext.manifest.module), str(ext.path)
        command = [sys.executable, "-c", IMPORT_CHECK, SOURCE_ROOT, kind, _module_name(ext.name), target, folder]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return f"import did not finish within {self.timeout_s:g} s (tried in a process of its own, now ended)"
        except OSError as exc:
            return f"import could not be tried in a process of its own: {exc}"
        said = (done.stdout.strip().splitlines() or [""])[-1]
        if done.returncode == 0 and said == "ok":
            return ""
        if done.returncode == 3:
            return f"import raised {said}"
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"import ended its process (exit {done.returncode}): {why}"

    def discover(self) -> None:
        state = self.state.read()
        found: dict[str, Extension] = {}
        problems = [self.state.problem] if self.state.problem else []
        for base, source in ((self.bundled_dir, "bundled"), (self.installed_dir, "installed")):
            if base is None or not base.is_dir():
                continue
            for folder in sorted(base.iterdir()):
                if not folder.is_dir() or folder.name.startswith((".", "_")):
                    continue
                if not (folder / MANIFEST).exists() and not (folder / TGW_SCRIPT).exists():
                    continue
                try:
                    manifest = read_manifest(folder)
                    if manifest.name != folder.name:
                        raise ManifestError(f"{folder}: the folder must be named after the extension ({manifest.name})")
                except ManifestError as exc:
                    problems.append(str(exc))
                    log.error("extension skipped: %s", exc)
                    continue
                self._add(found, Extension(manifest, source, folder), problems)
        if self.use_entry_points:
            for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
                try:
                    manifest = entry_point_manifest(ep)
                except ManifestError as exc:
                    problems.append(str(exc))
                    continue
                self._add(found, Extension(manifest, "pip", entry_point=ep), problems)
        with self._lock:
            for name, ext in found.items():
                old = self._extensions.get(name)
                if old is not None and (old.active or old.error):
                    found[name] = old  # keep the running one, and a failed one with its error
                ext.enabled = bool(state["enabled"].get(name, False))
            self._extensions = found
            self.problems = problems

    @staticmethod
    def _add(found: dict[str, Extension], ext: Extension, problems: list[str]) -> None:
        if ext.name in found:
            where = ext.path or ext.entry_point.value
            problems.append(f"extension {ext.name!r} from {where} is skipped: the name is already taken")
        else:
            found[ext.name] = ext

    def list(self) -> list[Extension]:
        """Every known extension, in hook order: manifest priority, then name."""
        with self._lock:
            return sorted(self._extensions.values(), key=lambda e: (e.manifest.priority, e.name))

    def get(self, name: str) -> Extension:
        with self._lock:
            try:
                return self._extensions[name]
            except KeyError:
                raise ExtensionError(f"no extension named {name!r}; see 'inglenook extensions list'") from None

    def record(self, name: str) -> dict:
        """What ``inglenook extensions install`` recorded about ``name`` (empty if it did not install it)."""
        return dict(self.state.read()["installed"].get(name) or {})

    def source_of(self, ext: Extension) -> str:
        """Where ``ext`` came from, for people: bundled, pip, or the recorded git URL and commit / folder."""
        record = self.record(ext.name)
        if not record:
            return ext.source
        commit = f" @ {record['commit'][:12]}" if record.get("commit") else ""
        return f"{record['source']}: {record['origin']}{commit}"

    def rows(self) -> list[dict]:
        """One dict per extension (name, version, status, source, description, error, hooks' time), in hook order.
        An enabled extension that is not running shows the error it failed with at the last start."""
        last = self.state.read()["errors"]
        return [
            {
                "name": ext.name,
                "version": ext.manifest.version,
                "status": ext.status if ext.active or ext.error else _idle_status(ext, last),
                "source": self.source_of(ext),
                "description": ext.manifest.description,
                "error": ext.error
                or (
                    f"at the last start: {last[ext.name]}"
                    if ext.enabled and not ext.active and ext.name in last
                    else ""
                ),  # fmt: skip
                "hook_ms": {k: round(t.total_s * 1000 / max(t.calls, 1), 2) for k, t in ext.timings.items()},
            }
            for ext in self.list()
        ]

    def has_hook(self, ext: Extension, hook: str) -> bool:
        return ext.active and self._impl(ext, hook) is not None

    def enable(self, name: str) -> Extension:
        """Enable ``name`` now and at every start; its error, if any, is in the returned record."""
        ext = self.get(name)
        self.state.update(lambda s: s["enabled"].__setitem__(name, True))
        ext.enabled = True
        ext.error = ""
        if not ext.active:
            self._activate(ext)
        return ext

    def disable(self, name: str) -> Extension:
        ext = self.get(name)

        def off(state: dict) -> None:
            state["enabled"][name] = False
            state["errors"].pop(name, None)

        self.state.update(off)
        ext.enabled = False
        ext.error = ""
        self._deactivate(ext, call_shutdown=True)
        return ext

    def set_settings(self, name: str, values: dict[str, Any]) -> list[str]:
        """Check and save setting values; returns the problems (those values are not saved)."""
        ext = self.get(name)
        specs = {s.name: s for s in ext.setting_specs}
        good, problems = {}, []
        for key, value in values.items():
            spec = specs.get(key)
            if spec is None:
                problems.append(f"{name} has no setting {key!r}")
                continue
            try:
                good[key] = spec.coerce(value)
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
        self.state.update(lambda s: s["settings"].setdefault(name, {}).update(good))
        ext.values.update(good)
        if ext.on_settings is not None:
            ext.on_settings(dict(ext.values))
        return problems

    def stop(self) -> None:
        """Call every active extension's shutdown hook (the app is closing)."""
        for ext in self.list():
            self._deactivate(ext, call_shutdown=True)

    # -- activation ----------------------------------------------------------------------
    def _activate(self, ext: Extension, checked: bool = False, startup: bool = True) -> bool:
        """Import, register and set up ``ext``; whether it is active. ``startup``: run its startup hook now."""
        problems = requirement_problems(ext.manifest)
        if problems:
            self._fail(ext, "; ".join(problems))
            return False
        if not checked and (error := self._check_import(ext)):
            self._fail(ext, error)
            return False
        try:
            plugin = self._timed(ext, "import", lambda: self._load(ext))
            self.pm.register(plugin, name=ext.name)
        except _HookFailed:
            return False
        except Exception as exc:  # pluggy refused a hook's signature
            self._fail(ext, f"{type(exc).__name__}: {exc}")
            return False
        unknown = [name for name in self._hook_names(ext) if name not in _HOOK_NAMES]
        if unknown:
            self._fail(ext, f"unknown hook(s): {', '.join(unknown)}")
            return False
        ext.plugin, ext.active = plugin, True
        try:
            self._load_settings(ext)
            if startup:
                self._call_plain(ext, "startup", {})
        except _HookFailed:
            return False
        self._forget_error(ext)
        log.info("extension %s %s enabled", ext.name, ext.manifest.version)
        return True

    def _load(self, ext: Extension) -> Any:
        if ext.entry_point is not None:
            return ext.entry_point.load()
        module = _import_file(ext.name, ext.path / ext.manifest.module, ext.path)
        if ext.manifest.kind == "tgw":
            from webui.extensions.tgw import adapt

            return adapt(module, ext)
        return module

    def _load_settings(self, ext: Extension) -> None:
        if ext.setting_specs:  # the tgw adapter declared them from params
            specs = ext.setting_specs
        else:
            impl = self._impl(ext, "settings")
            declared = self._call(ext, "settings", impl, {}) if impl else []
            specs = declared or []
            if not isinstance(specs, list) or not all(isinstance(s, Setting) for s in specs):
                self._fail(ext, "settings() must return a list of Setting")
                raise _HookFailed
            if not all(isinstance(s.default, SETTING_TYPES) for s in specs):
                self._fail(ext, "a Setting's default must be a bool, int, float or str")
                raise _HookFailed
        saved = self.state.read()["settings"].get(ext.name) or {}
        values = {}
        for spec in specs:
            try:
                values[spec.name] = spec.coerce(saved[spec.name]) if spec.name in saved else spec.default
            except (TypeError, ValueError):
                values[spec.name] = spec.default
        ext.setting_specs, ext.values = specs, values
        if ext.on_settings is not None:
            ext.on_settings(dict(values))

    def _deactivate(self, ext: Extension, call_shutdown: bool) -> None:
        if not ext.active:
            return
        if call_shutdown:
            try:
                self._call_plain(ext, "shutdown", {})
            except _HookFailed:
                pass
        ext.active = False
        if ext.plugin is not None and self.pm.is_registered(ext.plugin):
            self.pm.unregister(ext.plugin)
        ext.plugin = None

    def _fail(self, ext: Extension, message: str) -> None:
        """Disable ``ext`` for this run and keep the reason where the tab and the CLI show it (also in the
        state file, for ``extensions list``, which starts nothing)."""
        ext.error = message
        log.error("extension %s disabled: %s", ext.name, message)
        self._deactivate(ext, call_shutdown=False)
        self.state.update(lambda s: s["errors"].__setitem__(ext.name, message))

    def _forget_error(self, ext: Extension) -> None:
        if ext.name in self.state.read()["errors"]:
            self.state.update(lambda s: s["errors"].pop(ext.name, None))

    # -- calling hooks -----------------------------------------------------------------
    def _hook_names(self, ext: Extension) -> list[str]:
        """The hooks ``ext``'s plugin implements (known or not)."""
        names = []
        for hook_name in dir(self.pm.hook):
            caller = getattr(self.pm.hook, hook_name)
            if isinstance(caller, pluggy.HookCaller) and any(i.plugin_name == ext.name for i in caller.get_hookimpls()):
                names.append(hook_name)
        return names

    def _impl(self, ext: Extension, hook: str) -> pluggy.HookImpl | None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == ext.name:
                return impl
        return None

    def context(self, ext: Extension, mode: str = "", model: str | None = None) -> Context:
        return Context(
            name=ext.name,
            settings=MappingProxyType(dict(ext.values)),
            data_dir=self.data_root / ext.name,
            log=logging.getLogger(f"inglenook.extension.{ext.name}"),
            mode=mode,
            model=model,
        )

    def _each(self, hook: str) -> list[tuple[Extension, pluggy.HookImpl]]:
        """The active extensions implementing ``hook``, in hook order."""
        found = []
        for ext in self.list():
            if ext.active:
                impl = self._impl(ext, hook)
                if impl is not None:
                    found.append((ext, impl))
        return found

    def _call(self, ext: Extension, hook: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
        return self._timed(ext, hook, lambda: impl.function(**args))

    def _call_plain(self, ext: Extension, hook: str, kwargs: dict[str, Any]) -> Any:
        impl = self._impl(ext, hook)
        if impl is None:
            return None
        return self._call(ext, hook, impl, {"context": self.context(ext), **kwargs})

    def _timed(self, ext: Extension, hook: str, call: Callable[[], Any]) -> Any:
        """Run ``call`` in a thread of its own; a hang or an exception disables ``ext``."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = call()
            except BaseException as exc:  # noqa: BLE001 - whatever an extension raises stays with it
                outcome["error"] = exc
                outcome["trace"] = traceback.format_exc()

        worker = threading.Thread(target=target, name=f"extension-{ext.name}-{hook}", daemon=True)
        started = time.perf_counter()
        worker.start()
        worker.join(self.timeout_s)
        elapsed = time.perf_counter() - started
        timing = ext.timings.setdefault(hook, HookTiming())
        timing.calls, timing.total_s, timing.max_s = (
            timing.calls + 1,
            timing.total_s + elapsed,
            max(timing.max_s, elapsed),
        )
        log.debug("extension %s: %s took %.1f ms", ext.name, hook, elapsed * 1000)
        if worker.is_alive():
            self._fail(ext, f"{hook} did not return within {self.timeout_s:g} s")
            raise _HookFailed
        if "error" in outcome:
            exc = outcome["error"]
            log.debug("extension %s: %s raised:\n%s", ext.name, hook, outcome["trace"])
            self._fail(ext, f"{hook} raised {type(exc).__name__}: {exc}")
            raise _HookFailed
        return outcome.get("value")

    def _chain(self, hook: str, value: Any, key: str, check: Callable[[Any], bool], what: str, **kw: Any) -> Any:
        """Pass ``value`` through every extension's ``hook`` in order (None = unchanged)."""
        mode, model = kw.pop("mode", ""), kw.pop("model", None)
        for ext, impl in self._each(hook):
            try:
                result = self._call(ext, hook, impl, {key: value, "context": self.context(ext, mode, model), **kw})
            except _HookFailed:
                continue
            if result is None:
                continue
            if not check(result):
                self._fail(ext, f"{hook} returned {type(result).__name__}, expected {what}")
                continue
            value = result
        return value

    # -- the chat path's calls (see webui.hookspecs.ChatHooks) ------------------------------
    def chat_messages(self, messages: list[dict], model: str | None) -> list[dict]:
        messages = [dict(m) for m in messages]
        if messages and messages[-1].get("role") == "user":
            text = messages[-1].get("content", "")
            for ext, impl in self._each("chat_input_modifier"):
                context = self.context(ext, "chat", model)
                try:
                    args = {"text": text, "visible_text": text, "context": context}
                    result = self._call(ext, "chat_input_modifier", impl, args)
                except _HookFailed:
                    continue
                if result is None:
                    continue
                if not (isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], str)):
                    self._fail(ext, "chat_input_modifier must return (text, visible_text)")
                    continue
                text = result[0]
            text = self._chain("input_modifier", text, "text", _is_str, "str", mode="chat", model=model)
            messages[-1]["content"] = text
        return self._chain(
            "history_modifier",
            messages,
            "messages",
            _is_messages,
            "a list of {role, content}",
            mode="chat",
            model=model,
        )

    def chat_prompt(self, prompt: str, messages: list[dict], model: str | None) -> tuple[str, str]:
        for ext, impl in self._each("custom_prompt"):  # first result wins
            context = self.context(ext, "chat", model)
            try:
                args = {"messages": [dict(m) for m in messages], "prompt": prompt, "context": context}
                custom = self._call(ext, "custom_prompt", impl, args)
            except _HookFailed:
                continue
            if custom is None:
                continue
            if not isinstance(custom, str):
                self._fail(ext, f"custom_prompt returned {type(custom).__name__}, expected str")
                continue
            prompt = custom
            break
        prefix = self._chain("bot_prefix_modifier", "", "prefix", _is_str, "str", mode="chat", model=model)
        return prompt + prefix, prefix

    def completion_prompt(self, prompt: str, model: str | None) -> str:
        return self._chain("input_modifier", prompt, "text", _is_str, "str", mode="completion", model=model)

    def sampling(self, params: SamplingParams, mode: str, model: str | None) -> SamplingParams:
        def valid(p: Any) -> bool:
            if not isinstance(p, SamplingParams):
                return False
            try:
                p.validate()
            except ValueError:
                return False
            return True

        for ext, impl in self._each("state_modifier"):
            try:
                args = {"params": replace(params), "context": self.context(ext, mode, model)}
                result = self._call(ext, "state_modifier", impl, args)
            except _HookFailed:
                continue
            if result is None:
                continue
            if not valid(result):
                self._fail(ext, "state_modifier must return valid SamplingParams")
                continue
            params = result
        return params

    def output(self, text: str, usage: Usage | None, finish_reason: str | None, mode: str, model: str | None) -> str:
        if not text:
            return text
        reply = ReplyInfo(
            raw_text=text,
            finish_reason=finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            ttft_s=usage.ttft_s if usage else 0.0,
            tokens_per_s=usage.tokens_per_s if usage else 0.0,
        )
        return self._chain("output_modifier", text, "text", _is_str, "str", reply=reply, mode=mode, model=model)

    def tools(self) -> list[ExtensionTool]:
        """The active extensions' tools, in hook order; a name already taken is skipped (the first keeps it). An
        extension whose hook returns something that is not a list of valid tools is disabled, as for any hook."""
        found: list[ExtensionTool] = []
        for ext, impl in self._each("tools"):
            try:
                result = self._call(ext, "tools", impl, {"context": self.context(ext, "chat")})
            except _HookFailed:
                continue
            if result is None:
                continue
            problem = _tools_problem(result)
            if problem:
                self._fail(ext, f"tools returned {problem}")
                continue
            for tool in result:
                if any(t.name == tool.name for t in found):
                    log.warning("extension %s: tool %s is already offered by another extension", ext.name, tool.name)
                    continue
                found.append(tool)
        return found

    # -- UI and HTTP --------------------------------------------------------------------
    def run_ui(self, ext: Extension, where: str) -> bool:
        """Run ``ext``'s ui hook inside the caller's Gradio context (it must run on the building thread,
        so there is no time limit here); False if it has none or it raised (then it is disabled)."""
        impl = self._impl(ext, "ui") if ext.active else None
        if impl is None:
            return False
        args = {"where": where, "context": self.context(ext)}
        started = time.perf_counter()
        try:
            impl.function(**{k: args[k] for k in impl.argnames if k in args})
        except Exception as exc:
            log.debug("extension %s: ui raised:\n%s", ext.name, traceback.format_exc())
            self._fail(ext, f"ui raised {type(exc).__name__}: {exc}")
            return False
        finally:
            timing = ext.timings.setdefault("ui", HookTiming())
            elapsed = time.perf_counter() - started
            timing.calls, timing.total_s, timing.max_s = (
                timing.calls + 1,
                timing.total_s + elapsed,
                max(timing.max_s, elapsed),
            )
        ext.ui_built = True
        return True

    def mount_routes(self, api: Any) -> None:
        """Serve each active extension's ``api_routes`` under ``/extensions/NAME/``; a disabled
        extension's routes answer 404 from then on."""
        from fastapi import APIRouter, Depends, HTTPException

        def only_while_active(ext: Extension) -> Callable[[], None]:
            def check() -> None:
                if not ext.active:
                    raise HTTPException(status_code=404, detail=f"extension {ext.name} is disabled")

            return check

        for ext, impl in self._each("api_routes"):
            router = APIRouter(dependencies=[Depends(only_while_active(ext))])
            try:
                self._call(ext, "api_routes", impl, {"router": router, "context": self.context(ext)})
            except _HookFailed:
                continue
            api.include_router(router, prefix=f"/extensions/{ext.name}")

    def custom_css(self) -> str:
        return "\n".join(e.css for e in self.list() if e.active and e.css)

    def custom_js(self) -> str:
        return "\n".join(e.js for e in self.list() if e.active and e.js)

    def head_html(self) -> str:
        """A <script> with the extensions' JavaScript for the page's <head> (empty if none)."""
        js = self.custom_js()
        safe = js.replace("</", "<\\/")  # a "</script>" inside the code must not end the tag
        return f"<script>\n{safe}\n</script>" if js else ""


_HOOK_NAMES = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")}


def _tools_problem(value: Any) -> str:
    """Why ``value`` is not a list of usable :class:`ExtensionTool` s ("" when it is)."""
    if not isinstance(value, list) or not all(isinstance(t, ExtensionTool) for t in value):
        return "something other than a list of ExtensionTool"
    if not all(callable(t.run) for t in value):
        return "a tool whose run is not callable"
    try:
        parse_tools([{"name": t.name, "description": t.description, "parameters": t.parameters} for t in value])
    except ToolError as exc:
        return f"an invalid tool: {exc}"
    return ""


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def _idle_status(ext: Extension, last_errors: dict) -> str:
    if not ext.enabled:
        return "disabled"
    return "error" if ext.name in last_errors else "enabled"


def _module_name(name: str) -> str:
    return f"inglenook_extension_{name.replace('-', '_')}"


def _import_file(name: str, path: Path, folder: Path) -> ModuleType:
    """Import an extension's module afresh as a package rooted at its folder (relative imports work)."""
    module_name = _module_name(name)
    spec = importlib.util.spec_from_file_location(module_name, path, submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
