"""A model's facts as text: the terminal (`inglenook models`) and the Model tab's info panel print the same lines."""

from __future__ import annotations


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
