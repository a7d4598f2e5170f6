"""``inglenook extensions list | install | enable | disable | remove | update``.

Changes made here apply to the next start of the server (the Extensions tab applies them at once).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from webui.extensions.host import ExtensionHost
from webui.extensions.install import RIGHTS_WARNING, install, remove, update


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "extensions",
        help="list, install, enable, disable, remove or update extensions",
        description="Extensions live in USER_DATA/extensions/ (installed), extensions/ (bundled) or pip packages "
        "with the entry point group inglenook.extensions. " + RIGHTS_WARNING,
    )
    parser.add_argument(
        "--user-data", type=Path, default=Path("user_data"), help="folder for chats and settings (default: ./user_data)"
    )
    esub = parser.add_subparsers(dest="extensions_command", metavar="{list,install,enable,disable,remove,update}")
    esub.required = True
    listing = esub.add_parser("list", help="every extension found, its version, source and status")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    inst = esub.add_parser(
        "install",
        help="install from a git URL, a folder or a pip requirement",
        description="SOURCE: a git URL (cloned, pinned to the commit it got), a local folder (copied) or a pip "
        "requirement or wheel. Python requirements are installed only if they change none of Inglenook's own "
        "dependencies. The extension is enabled.",
    )
    inst.add_argument("source", metavar="SOURCE")
    inst.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    for name, text in (
        ("enable", "enable an extension (from the next start)"),
        ("disable", "disable an extension (from the next start)"),
        ("remove", "remove an installed extension and what its install added"),
        ("update", "fetch an installed extension again from its source"),
    ):
        esub.add_parser(name, help=text).add_argument("name", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    host = ExtensionHost(args.user_data)
    host.discover()
    command = args.extensions_command
    if command == "list":
        return _list(host, args.json)
    if command == "install":
        print(RIGHTS_WARNING, file=sys.stderr)
        if not args.yes and not _confirm(f"Install {args.source}?"):
            print("not installed", file=sys.stderr)
            return 1
        names = install(host, args.source)
        for name in names:
            ext = host.get(name)
            print(f"installed {name} {ext.manifest.version} ({host.source_of(ext)}), enabled")
        return 0
    if command == "enable":
        ext = host.enable(args.name)
        host.stop()
        if ext.error:
            print(f"error: {args.name} is enabled but cannot run: {ext.error}", file=sys.stderr)
            return 1
        print(f"enabled {args.name}")
        return 0
    if command == "disable":
        host.disable(args.name)
        print(f"disabled {args.name}")
        return 0
    if command == "remove":
        print(remove(host, args.name))
        return 0
    print(update(host, args.name))
    return 0


def _confirm(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _list(host: ExtensionHost, as_json: bool) -> int:
    rows = host.rows()
    if as_json:
        print(json.dumps({"extensions": rows, "problems": host.problems}, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no extensions found")
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['version']:<10} {r['status']:<9} {r['source']}  {r['description']}")
        if r["error"]:
            print(f"{'':<{width}}  error: {r['error']}")
    for problem in host.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 0
