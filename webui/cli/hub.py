"""``inglenook models search|download|rm``, ``inglenook pull`` and ``inglenook hub login|logout``.

Thin: the work is :mod:`webui.models.hub` and :mod:`webui.models.downloads`, shared with the Download panel
and ``/v1/internal/models/download``. Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import time
from pathlib import Path

from webui.models.downloads import DownloadManager, Job, remove_model
from webui.models.hub import HubConfig, HubError, Memory, forget_token, repo_files, save_token, search
from webui.paths import UnsafeName

PROGRESS_EVERY_S = 0.5


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="folder of models (default: ./models)")
    p.add_argument("--user-data", type=Path, default=Path("user_data"),
                   help="folder holding the hub token from 'hub login' (default: ./user_data)")  # fmt: skip


def add_models_parsers(msub) -> None:
    """``models search``, ``models download`` and ``models rm`` (added to ``inglenook models``)."""
    s = msub.add_parser(
        "search",
        help="search the Hugging Face hub for models our loaders load (GGUF, safetensors, GPTQ)",
        description="Uses HF_ENDPOINT (a mirror) and the token from HF_TOKEN or 'hub login'; HF_HUB_OFFLINE=1 "
        "turns the hub off.",
    )
    s.add_argument("query", help="words in the repo name, e.g. 'qwen gguf'")
    s.add_argument("--sort", choices=("downloads", "likes", "recent"), default="downloads")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--files", action="store_true", help="also list each result's files with fit badges (slower)")
    s.add_argument("--n-ctx", type=int, default=4096, help="context length for the fit badges (default: 4096)")
    s.add_argument("--json", action="store_true", help="print JSON")
    _where(s)
    d = msub.add_parser(
        "download",
        help="download REPO[:QUANT|:FILE] into the models folder (resumes an interrupted download)",
        description="REPO alone takes Q4_K_M (or the nearest GGUF), or the whole safetensors/GPTQ folder. "
        ":QUANT picks a GGUF quantization (Q8_0, IQ4_XS, F16, ...), :FILE one file of the repo. Each file is "
        "checked against the hub's sha256 before it is moved into place.",
    )
    _download_options(d)
    rm = msub.add_parser("rm", help="delete a model from the models folder (with its card and licence)")
    rm.add_argument("name", help="its name in the models folder (see 'models list')")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask")
    rm.add_argument("--models-dir", type=Path, default=Path("models"), help="folder of models (default: ./models)")


def _download_options(d: argparse.ArgumentParser) -> None:
    d.add_argument("spec", metavar="REPO[:QUANT|:FILE]")
    d.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also fetch pickle weights (*.bin, *.pt); they can run code when loaded: trusted repos only",
    )
    d.add_argument("--json", action="store_true", help="print the finished download as JSON")
    _where(d)


def add_parser(sub) -> None:
    """``pull`` (ollama's word for ``models download``) and ``hub login|logout``."""
    pull = sub.add_parser("pull", help="download a model from the hub: REPO[:QUANT] (= 'models download')")
    _download_options(pull)
    hub = sub.add_parser("hub", help="log in to the Hugging Face hub (for gated and private repos), or out")
    hsub = hub.add_subparsers(dest="hub_command", metavar="{login,logout}", required=True)
    login = hsub.add_parser("login", help="store a hub token in user_data/hub/token (mode 0600)")
    login.add_argument("--token", default=None, help="the token (default: asked for, not echoed; or read from stdin)")
    login.add_argument("--user-data", type=Path, default=Path("user_data"))
    logout = hsub.add_parser("logout", help="delete the stored token")
    logout.add_argument("--user-data", type=Path, default=Path("user_data"))


def run_models(args: argparse.Namespace) -> int:
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings: our one line says it
    try:
        if args.models_command == "search":
            return _search(args)
        if args.models_command == "rm":
            return _rm(args)
        return download(args)
    except (HubError, UnsafeName, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run_pull(args: argparse.Namespace) -> int:
    return run_models(argparse.Namespace(**{**vars(args), "models_command": "download"}))


def run_hub(args: argparse.Namespace) -> int:
    if args.hub_command == "logout":
        gone = forget_token(args.user_data)
        print("Logged out: the stored token is deleted." if gone else "No token was stored.")
        return 0
    token = args.token
    if token is None:
        token = getpass.getpass("Hugging Face token: ") if sys.stdin.isatty() else sys.stdin.readline()
    try:
        path = save_token(args.user_data, token)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Token saved to {path} (readable by you only). HF_TOKEN, when set, is used instead.")
    return 0


def _search(args: argparse.Namespace) -> int:
    config = HubConfig.load(args.user_data)
    results = search(config, args.query, args.sort, args.limit)
    found = [r.as_dict() for r in results]
    if args.files:
        memory = Memory.now()
        for r in found:
            try:
                r["files"] = repo_files(config, r["repo"], args.n_ctx, memory).as_dict()
            except HubError as exc:
                r["files"] = {"error": str(exc)}
    if args.json:
        print(json.dumps({"endpoint": config.endpoint, "results": found}, ensure_ascii=False, indent=2))
        return 0
    if not found:
        print(f"no models for {args.query!r} on {config.endpoint}")
        return 0
    for r in found:
        params = f" · {r['parameters'] / 1e9:.2f}B params" if r["parameters"] else ""
        gated = " · gated" if r["gated"] else ""
        print(f"{r['repo']}  [{', '.join(r['formats'])}]  ↓{r['downloads']:,} ♥{r['likes']:,} · "
              f"{r['license'] or 'no licence stated'}{params}{gated} · {r['architecture'] or '?'}")  # fmt: skip
        for c in (r.get("files") or {}).get("gguf", []):
            print(f"    {c['quant']:<10} {_size(c['size']):>9}  {c['fit'].get('label', '')}  {r['repo']}:{c['quant']}")
    return 0


def download(args: argparse.Namespace) -> int:
    manager = DownloadManager(args.models_dir, args.user_data)
    job = manager.prepare(args.spec, allow_pickle=args.allow_pickle)
    p = job.plan
    print(f"{p.repo} → {args.models_dir / p.target} ({_size(p.total)}, licence: {p.license or 'not stated'})",
          file=sys.stderr)  # fmt: skip
    for note in p.skipped:
        print(f"skipped {note}", file=sys.stderr)
    line = _ProgressLine()
    manager.run(job, line.update)
    line.end(job)
    if args.json:
        print(json.dumps(job.as_dict(), ensure_ascii=False, indent=2))
    if job.state != "done":
        print(f"error: {job.error}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"Downloaded {p.target}: inglenook run {p.target}  (licence and card in {p.target}.hub/)"
              if p.kind == "gguf" else f"Downloaded {p.target}/: inglenook run {p.target}")  # fmt: skip
    return 0


class _ProgressLine:
    """One progress line on stderr: redrawn in place on a terminal, a new line every few seconds otherwise."""

    def __init__(self) -> None:
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, job: Job) -> None:
        now = time.monotonic()
        if now - self.last < (PROGRESS_EVERY_S if self.tty else 2.0) and not job.finished:
            return
        self.last = now
        print(("\r" if self.tty else "") + format_progress(job.as_dict()), end="" if self.tty else "\n",
              file=sys.stderr, flush=True)  # fmt: skip

    def end(self, job: Job) -> None:
        if self.tty:
            print(file=sys.stderr)


def format_progress(d: dict) -> str:
    eta = f" · ETA {d['eta_s']:.0f} s" if d.get("eta_s") is not None else ""
    return (f"{d['state']:<9} {d['percent']:5.1f}% · {_size(d['bytes'])} of {_size(d['total'])} · "
            f"{_size(d['speed'])}/s{eta}")  # fmt: skip


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _rm(args: argparse.Namespace) -> int:
    target = args.models_dir / args.name
    if not target.exists():
        print(f"error: no {args.name!r} in {args.models_dir}", file=sys.stderr)
        return 1
    if not args.yes:
        try:
            answer = input(f"Delete {target} and its card/licence? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
    for path in remove_model(args.models_dir, args.name):
        print(f"deleted {path}")
    return 0
