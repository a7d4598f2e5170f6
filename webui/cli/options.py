"""The options shared by `serve`, `run`, `bench` and the models commands, and the Settings built from them."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from webui.logs import LEVELS
from webui.settings import API_KEY_ENV, Settings


def add_models_dir(p: argparse.ArgumentParser) -> None:
    """``--models-dir``, declared once for every command that reads the models folder."""
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="folder of GGUF files and model folders (default: ./models)",
    )


def add_model_options(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    """Which model, how to load it, and what it may do: the flags of ``serve``, ``run`` and ``bench``."""
    add_models_dir(p)
    if with_model:
        p.add_argument(
            "--model",
            default=None,
            help="model to load: a path, a name in the models folder, or 'default' (the embedded Gemma 3 270M)",
        )
    p.add_argument(
        "--loader",
        default=None,
        help="loader to use (default: the first that recognises the model, e.g. llama.cpp for .gguf)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for generation (default: all cores)")
    p.add_argument("--n-ctx", type=int, default=None, help="context length in tokens (default: 4096)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let the transformers loader read pickle weights (*.bin, *.pt); they can run code: trusted sources only",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped inside a model folder (transformers/gptq): trusted sources only",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=LEVELS,
        help="how much to log to stderr and to user_data/logs/inglenook.log (default: info)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a load setting of the loader, over saved ones (repeatable), e.g. --set extra_buffer_types=off "
        "(see 'loaders' for each loader's settings)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings(
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 7860),
        models_dir=args.models_dir,
        user_data=getattr(args, "user_data", Path("user_data")),
        model=getattr(args, "model", None),
        loader=args.loader,
        threads=args.threads or 0,
        n_ctx=args.n_ctx or 4096,
        allow_pickle=getattr(args, "allow_pickle", False),
        trust_remote_code=getattr(args, "trust_remote_code", False),
        load_overrides={
            **{k: v for k, v in (("n_ctx", args.n_ctx), ("threads", args.threads)) if v is not None},
            **parse_set(getattr(args, "set", None) or []),
        },
        stream_interval_s=max(0, getattr(args, "stream_interval_ms", 50)) / 1000,
    )
    return replace(settings, **serve_settings(args))  # the API and access flags (webui/api_auth.py)


def parse_set(pairs: list[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` options as a dict; the loader's settings type checks each value when it is built."""
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set expects NAME=VALUE, e.g. --set extra_buffer_types=off (got {pair!r})")
        found[name.strip()] = value.strip()
    return found


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The serve command's flags for the API and for exposure beyond this machine."""
    g = p.add_argument_group("API and access")
    g.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (reachable from other machines; needs keys)")
    g.add_argument("--api-key", default=None, help=f"Bearer key required on /v1/* (or env {API_KEY_ENV})")
    g.add_argument("--api-key-file", type=Path, default=None, help="read the API key from this file")
    g.add_argument("--admin-key", default=None, help="key required to load/unload models through the API")
    g.add_argument("--auth", default=None, help="UI login as user:password")
    g.add_argument("--auth-file", type=Path, default=None, help="file of user:password lines for the UI login")
    g.add_argument("--admin-auth", default=None, help="UI login with admin rights (install extensions, load by path)")
    g.add_argument("--admin-auth-file", type=Path, default=None, help="file of user:password lines for admin logins")
    g.add_argument("--insecure-no-auth", action="store_true", help="allow --listen without an API key and a UI login")
    g.add_argument("--cors-origin", action="append", default=[], help="other browser origin allowed (repeat)")
    g.add_argument("--allowed-host", action="append", default=[], help="extra Host header name to accept (repeat)")
    g.add_argument("--api-port", type=int, default=None, help="also serve the API alone on this port")
    g.add_argument("--max-loaded-models", type=int, default=1, help="models kept in memory at once (default: 1)")
    g.add_argument(
        "--require-model",
        action="store_true",
        help='API requests without "model" get 400, as OpenAI (default: they use the active model)',
    )


def serve_settings(args: argparse.Namespace) -> dict:
    """Settings fields from the flags above (absent flags, e.g. for other commands, give the defaults)."""
    if not hasattr(args, "api_key"):
        return {}
    api_key = args.api_key or _read_secret(args.api_key_file, "--api-key-file") or os.environ.get(API_KEY_ENV) or None
    logins = _parse_logins(args.auth, "--auth") if args.auth else []
    if args.auth_file:
        logins += _parse_logins(_read_secret(args.auth_file, "--auth-file"), "--auth-file")
    admins = _parse_logins(args.admin_auth, "--admin-auth") if getattr(args, "admin_auth", None) else []
    if getattr(args, "admin_auth_file", None):
        admins += _parse_logins(_read_secret(args.admin_auth_file, "--admin-auth-file"), "--admin-auth-file")
    if both := sorted({u for u, _ in logins} & {u for u, _ in admins}):
        raise ValueError(f"{', '.join(both)} given both as a login (--auth) and an admin login (--admin-auth)")
    if args.max_loaded_models < 1:
        raise ValueError("--max-loaded-models must be at least 1")
    fields = {
        "api_key": api_key,
        "admin_key": args.admin_key or None,
        "ui_auth": logins,
        "admin_auth": admins,
        "insecure_no_auth": args.insecure_no_auth,
        "cors_origins": list(args.cors_origin),
        "allowed_hosts": list(args.allowed_host),
        "api_port": args.api_port,
        "max_loaded_models": args.max_loaded_models,
        "require_model": getattr(args, "require_model", False),
    }
    if args.listen:
        fields["host"] = "0.0.0.0"
    return fields


def _read_secret(path: Path | None, flag: str) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {flag} {path}: {exc}") from None


def _parse_logins(text: str, flag: str) -> list[tuple[str, str]]:
    logins = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{flag} expects user:password (got a line without both)")
        logins.append((user, password))
    return logins
