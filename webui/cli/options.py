"""Settings from parsed command-line options, shared by `serve`, `run` and `bench`."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from webui.settings import API_KEY_ENV, Settings


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
    g.add_argument("--insecure-no-auth", action="store_true", help="allow --listen without an API key and a UI login")
    g.add_argument("--cors-origin", action="append", default=[], help="browser origin allowed to call /v1 (repeat)")
    g.add_argument("--allowed-host", action="append", default=[], help="extra Host header name to accept (repeat)")
    g.add_argument("--api-port", type=int, default=None, help="also serve the API alone on this port")
    g.add_argument("--max-loaded-models", type=int, default=1, help="models kept in memory at once (default: 1)")


def serve_settings(args: argparse.Namespace) -> dict:
    """Settings fields from the flags above (absent flags, e.g. for other commands, give the defaults)."""
    if not hasattr(args, "api_key"):
        return {}
    api_key = args.api_key or _read_secret(args.api_key_file, "--api-key-file") or os.environ.get(API_KEY_ENV) or None
    logins = _parse_logins(args.auth, "--auth") if args.auth else []
    if args.auth_file:
        logins += _parse_logins(_read_secret(args.auth_file, "--auth-file"), "--auth-file")
    if args.max_loaded_models < 1:
        raise ValueError("--max-loaded-models must be at least 1")
    fields = {
        "api_key": api_key,
        "admin_key": args.admin_key or None,
        "ui_auth": logins,
        "insecure_no_auth": args.insecure_no_auth,
        "cors_origins": list(args.cors_origin),
        "allowed_hosts": list(args.allowed_host),
        "api_port": args.api_port,
        "max_loaded_models": args.max_loaded_models,
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
