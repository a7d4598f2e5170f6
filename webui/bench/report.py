"""The bench's results as data and as text: medians, the goals' verdicts, the table, the switch report."""

from __future__ import annotations

import statistics

from webui.bench.measure import GOAL_EXTRA_TTFT_MS, GOAL_RATIO, Contender


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarise(contenders: list[Contender], tokens: int) -> dict:
    """Per contender: medians, each run, the ratio and extra TTFT against raw, and the goals' verdicts."""
    out: dict[str, dict] = {}
    for c in contenders:
        runs = c.samples
        out[c.name] = {
            "tokens_per_s": round(_median([s.tokens_per_s for s in runs]), 2),
            "ttft_ms": round(_median([s.ttft_s for s in runs]) * 1000, 1),
            "tokens": int(_median([s.tokens for s in runs])),
            "prompt_tokens": c.prompt_tokens,
            "finish_reasons": sorted({s.finish_reason for s in runs}),
            "stopped_early": any(s.tokens < tokens for s in runs),
            "runs": [
                {
                    "tokens_per_s": round(s.tokens_per_s, 2),
                    "ttft_ms": round(s.ttft_s * 1000, 1),
                    "tokens": s.tokens,
                    "finish_reason": s.finish_reason,
                }
                for s in runs
            ],
        }
        reported = [s.reported for s in runs if s.reported]
        if reported:  # what the server measured itself (engine side), next to what the client saw
            out[c.name]["server_reported"] = {
                key: _median([r[key] for r in reported if r[key] is not None]) for key in ("ttft_ms", "tokens_per_s")
            }
            # run by run against the same generation's own figures: what the way to the client costs, apart
            # from what other work on the machine does to the model (which raw's separate runs cannot show)
            paired = [s for s in runs if s.reported and s.reported.get("ttft_ms") is not None]
            out[c.name]["over_server_ttft_ms"] = round(
                _median([s.ttft_s * 1000 - s.reported["ttft_ms"] for s in paired]), 1
            )
            speeds = [s for s in paired if s.reported.get("tokens_per_s")]
            out[c.name]["ratio_to_server_tokens_per_s"] = (
                round(_median([s.tokens_per_s / s.reported["tokens_per_s"] for s in speeds]), 3) if speeds else None
            )
    raw = out.get("raw")
    for name, row in out.items():
        if raw and raw["tokens_per_s"] > 0:
            row["ratio_tokens_per_s"] = round(row["tokens_per_s"] / raw["tokens_per_s"], 3)
        else:
            row["ratio_tokens_per_s"] = None
        row["extra_ttft_ms"] = round(row["ttft_ms"] - raw["ttft_ms"], 1) if raw else None
        if name != "raw":
            row["goal_tokens_per_s"] = _verdict(row["ratio_tokens_per_s"], lambda r: r >= GOAL_RATIO)
            row["goal_ttft"] = _verdict(row["extra_ttft_ms"], lambda x: x <= GOAL_EXTRA_TTFT_MS)
    return out


def _verdict(value, ok) -> str:
    if value is None:
        return "n/a"
    return "PASS" if ok(value) else "MISS"


def _pad(cell: str, width: int, left: bool) -> str:
    return cell.ljust(width) if left else cell.rjust(width)


def format_table(result: dict) -> str:
    """The comparison as a text table, then the goals and notes."""
    head = ("contender", "tok/s", "TTFT ms", "tokens", "× raw tok/s", "+TTFT ms vs raw")
    rows = [head]
    for name, row in result["contenders"].items():
        ratio = f"{row['ratio_tokens_per_s']:.3f}" if row["ratio_tokens_per_s"] is not None else "-"
        extra = f"{row['extra_ttft_ms']:+.1f}" if name != "raw" and row["extra_ttft_ms"] is not None else "-"
        tokens = str(row["tokens"])
        if row["stopped_early"]:
            tokens += "*"
        rows.append((name, f"{row['tokens_per_s']:.1f}", f"{row['ttft_ms']:.1f}", tokens, ratio, extra))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(_pad(cell, w, i == 0) for i, (cell, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    goals = []
    for name, row in result["contenders"].items():
        if name == "raw":
            continue
        goals.append(
            f"{name}: tok/s ≥ {GOAL_RATIO:.2f}× raw {row['goal_tokens_per_s']}, "
            f"TTFT ≤ +{GOAL_EXTRA_TTFT_MS:.0f} ms {row['goal_ttft']}"
        )
    text = "\n".join(lines)
    if goals:
        text += "\n\ngoals: " + "; ".join(goals)
    for name, row in result["contenders"].items():
        reported = row.get("server_reported")
        if reported and reported["ttft_ms"] is not None and reported["tokens_per_s"] is not None:
            text += (
                f"\n{name} as the server measured it itself (engine side, no HTTP or client): "
                f"TTFT {reported['ttft_ms']:.0f} ms, {reported['tokens_per_s']:.1f} tok/s"
            )
    if "ui" in result["contenders"]:
        text += "\nui TTFT includes 0-50 ms of gradio_client's own polling, which a browser does not have"
    page = result["contenders"].get("page")
    if page:
        text += "\npage: as Chromium shows the reply (Enter to the first text, first text to the whole reply shown)"
        if page.get("ratio_to_server_tokens_per_s") is not None:
            text += (
                f"; run by run against the server's own figures for the same reply: "
                f"{page['ratio_to_server_tokens_per_s']:.3f}× its tok/s, TTFT {page['over_server_ttft_ms']:+.0f} ms"
            )
    early = [f"{n} ({', '.join(r['finish_reasons'])})" for n, r in result["contenders"].items() if r["stopped_early"]]
    if early:
        text += f"\n* stopped before {result['tokens_requested']} tokens on some run: {', '.join(early)}"
    return text


def header(result: dict) -> str:
    """The lines above the table: model, settings, runs, load average, prompt."""
    load = result.get("load_average")
    load_text = f", load average {load[0]:.2f} at start" if load else ""
    return (
        f"model {result['model']} ({result['loader']}), {result['threads']} threads, n_ctx {result['n_ctx']}, "
        f"{result['tokens_requested']} tokens, median of {result['runs']} runs{load_text}\n"
        f"prompt: {result['prompt']!r}"
    )


def format_switch(result: dict) -> str:
    lines = [f"model {result['model']} ({result['loader']}); RSS before loading: {result['rss_before_mb']} MB", "",
             "cycle | load s | RSS loaded MB | RSS unloaded MB", "---|---|---|---"]  # fmt: skip
    lines += [
        f"{r['cycle']} | {r['load_s']:.2f} | {r['rss_loaded_mb']} | {r['rss_unloaded_mb']}" for r in result["cycles"]
    ]
    lines.append(f"\nRSS loaded, last cycle vs first: {result['rss_growth_percent']:+.1f} %")
    return "\n".join(lines)


def text_note(who: str, matches: bool, metadata: dict[str, str]) -> str:
    """The line printed when ``who``'s greedy text (the engine's, the API's) differs from raw's, or "".

    Equal text is expected only when both run llama.cpp's same kernels on a lone sequence. With
    ``parallel`` > 1 the engine turns the repacked kernels (extra buffer types) off, so a stream's rows are
    computed as in a batch of any size, while raw keeps llama.cpp's default (on); the logits then differ in
    their last bits and a near tie between two tokens may go the other way. That is a difference in
    numerics, not a bug, and the note says so instead of claiming it should not happen.
    """
    if matches:
        return ""
    parallel = int(metadata.get("inglenook.parallel", "1") or 1)
    kernels = metadata.get("inglenook.extra_buffer_types", "")
    if parallel > 1:
        return (f"note: {who} text differs from raw's, as expected here: the model is loaded with parallel={parallel}, "
                "which decodes without llama.cpp's repacked kernels (raw keeps them), so the logits differ in their "
                "last bits and a near tie may go either way; load with parallel=1 to compare texts")  # fmt: skip
    if kernels.startswith("off"):
        return (f"note: {who} text differs from raw's, as it may here: the engine decodes without llama.cpp's "
                f"repacked kernels ({kernels}) and raw with them, so near ties may go either way")  # fmt: skip
    return f"note: {who} text differs from raw's (it should not under greedy decoding with the same kernels)"
