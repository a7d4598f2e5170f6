"""``inglenook models list|inspect``: the model catalog from the terminal, the same facts the Model tab shows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backends.base import ModelLoadError
from backends.registry import LoaderRegistry
from webui.catalog import Catalog, available_memory, variant_report
from webui.models import resolve_model

DEFAULT_N_CTX = 4096


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="list the models folder, or inspect one model's facts and memory needs")
    msub = models.add_subparsers(dest="models_command", metavar="{list,inspect}", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, default=Path("models"), help="folder of models (default: ./models)")
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


def run(args: argparse.Namespace) -> int:
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


def _size(n: int | None) -> str:
    if not n:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def format_list(models: list[dict]) -> str:
    lines = []
    for m in models:
        lines.append(m["name"])
        for v in m["variants"]:
            if v["error"]:
                lines.append(f"  {v['name']}  ERROR: {v['error']}")
                continue
            f = v["facts"]
            loader = v["loader"] or "no available loader"
            mem = v["memory"]
            lines.append(
                f"  {v['name']}  {v['kind']}  {v['quantization'] or '?'}  {_params(f['parameter_count'])} params  "
                f"{_size(v['size'])}  [{loader}]  needs ~{_size(mem['total'])} at {mem['n_ctx']} ctx: {mem['verdict']}"
            )
            lines.extend(f"    note: {w}" for w in v["warnings"])
    return "\n".join(lines)


def format_report(r: dict) -> str:
    if r["error"]:
        return f"{r['name']} ({r['path']})\n  error: {r['error']}"
    return "\n".join(panel_lines(r))


def panel_lines(r: dict) -> list[str]:
    """The facts as lines of text: used by the terminal and (as Markdown) by the Model tab's info panel."""
    f, mem = r["facts"], r["memory"]
    bits = f"{f['bits_per_weight']} bits/weight" if f["bits_per_weight"] else "? bits/weight"
    lines = [
        f"{r['name']} — model {r['model']} ({r['kind']})",
        f"architecture: {f['architecture'] or '?'}",
        f"parameters: {_params(f['parameter_count'])}",
        f"quantization: {f['quantization'] or '?'} ({bits})",
        f"context length (trained): {f['context_length'] or '?'}",
        f"file size: {_size(f['file_size'])}",
        f"chat template embedded: {'yes' if f['chat_template'] else 'no'}",
        f"licence: {f['license'] or 'not stated'}",
        "loaders: "
        + (
            ", ".join(o["name"] + ("" if o["available"] else f" (unavailable: {o['why_not']})") for o in r["loaders"])
            or "none recognises it"
        ),  # fmt: skip
        f"memory at {mem['n_ctx']} tokens of context: ~{_size(mem['total'])} (weights {_size(mem['weights'])} + "
        f"KV cache {_size(mem['kv_cache'])} + buffers {_size(mem['overhead'])}); available {_size(mem['available'])}"
        f": {mem['verdict']}",
    ]
    lines.extend(f"note: {w}" for w in r["warnings"])
    lines.extend(f"{k}: {v}" for k, v in f["metadata"].items())
    return lines
