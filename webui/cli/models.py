"""``inglenook models list|inspect``: the model catalog from the terminal, the same facts the Model tab shows."""

from __future__ import annotations

import argparse
import json

from backends.base import ModelLoadError
from backends.registry import LoaderRegistry
from webui.cli.options import add_models_dir
from webui.models.catalog import Catalog, variant_report
from webui.models.folder import resolve_model
from webui.models.memory import available_memory
from webui.models.report import format_list, format_report

DEFAULT_N_CTX = 4096


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="list the models folder, or inspect one model's facts and memory needs")
    msub = models.add_subparsers(dest="models_command", metavar="{list,inspect}", required=True)
    common = argparse.ArgumentParser(add_help=False)
    add_models_dir(common)
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX, help="context length for the memory estimate")
    msub.add_parser("list", parents=[common], help="models in the models folder, grouped with their quantizations")
    inspect = msub.add_parser(
        "inspect",
        parents=[common],
        help="facts about one model: architecture, parameters, quantization, context, memory estimate",
        description="PATH_OR_NAME is a file or folder name in the models folder, a model's name (its first "
        "quantization), a path, or 'default'. Nothing is loaded: the facts come from the file's header.",
    )
    inspect.add_argument("target", metavar="PATH_OR_NAME")
    from webui.cli import hub as cli_hub  # search, download and rm: the Hugging Face hub (issue 14)

    cli_hub.add_models_parsers(msub)
    msub.metavar = "{list,inspect,search,download,rm}"


def run(args: argparse.Namespace) -> int:
    if args.models_command in ("search", "download", "rm"):
        from webui.cli import hub as cli_hub

        return cli_hub.run_models(args)
    if args.n_ctx < 1:
        raise ValueError("--n-ctx must be at least 1")
    catalog, registry, available = Catalog(args.models_dir), LoaderRegistry(), available_memory()
    if args.models_command == "list":
        found = [
            {"name": m.name, "variants": [variant_report(v, registry, args.n_ctx, available) for v in m.variants]}
            for m in catalog.models()
        ]
        if args.json:
            print(json.dumps({"models_dir": str(args.models_dir), "models": found}, ensure_ascii=False, indent=2))
        else:
            print(format_list(found) if found else f"no models in {args.models_dir}")
        return 0
    hit = catalog.find(args.target)
    variant = hit[1] if hit else catalog.variant_at(resolve_model(args.target, args.models_dir))
    report = variant_report(variant, registry, args.n_ctx, available)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    if report["error"]:
        raise ModelLoadError(report["error"])
    return 0
