"""``inglenook loaders``: every registered loader, whether it can run here, what it loads, which samplers it honours.

A loader whose optional dependency is missing is listed as unavailable with
the reason and the install hint; it never hides the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from backends.base import SamplingParams
from backends.registry import LoaderRegistry
from webui.models.install import EXTRAS, install


def add_parser(sub) -> None:
    p = sub.add_parser(
        "loaders",
        help="list the loaders, whether their dependencies import, what they load and which samplers they honour",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of loaders")
    lsub = p.add_subparsers(dest="loaders_command", metavar="{install}")
    install = lsub.add_parser(
        "install",
        help="install a loader's packages into this environment (transformers, gptq: the torch extra)",
        description="Runs pip install with the packages of Inglenook's [torch] extra (torch, transformers, "
        "GPTQModel, accelerate), printing pip's progress; then checks the loader imports.",
    )
    install.add_argument("loader", choices=sorted(EXTRAS), help="the loader to install")


def describe(registry: LoaderRegistry) -> list[dict]:
    """One dict per registered loader (available or not), then one per plugin that failed to register."""
    every = [f.name for f in fields(SamplingParams) if f.name not in ("max_new_tokens", "stop")]
    found = []
    for name in registry.names():
        loader = registry.get(name)
        problem = loader.available()
        found.append(
            {
                "name": name,
                "available": problem is None,
                "problem": problem,
                "install_hint": loader.install_hint,
                "description": loader.description,
                "loads": loader.loads,
                "settings": [f.name for f in fields(loader.settings_type)],
                "samplers": [p for p in every if p in loader.supported_params],
                "ignores": [p for p in every if p not in loader.supported_params],
            }
        )
    for err in registry.errors:
        found.append({"name": err.source, "available": False, "problem": err.error, "install_hint": ""})
    return found


def run(args: argparse.Namespace) -> int:
    if getattr(args, "loaders_command", None) == "install":
        registry = LoaderRegistry()
        problem = install(args.loader, registry, lambda line: print(line, flush=True))
        if problem:
            print(f"error: {args.loader} is still unavailable: {problem}", file=sys.stderr)
            return 1
        print(f"{args.loader} is installed and available.")
        return 0
    found = describe(LoaderRegistry())
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
        return 0
    for item in found:
        state = "available" if item["available"] else f"UNAVAILABLE: {item['problem']}"
        print(f"{item['name']}  ({state})")
        if item.get("loads"):
            print(f"  loads:    {item['loads']}")
        if "samplers" in item:
            print(f"  samplers: {', '.join(item['samplers']) or '-'}")
            print(f"  ignores:  {', '.join(item['ignores']) or '-'}")
    return 0
