"""Compare models or quants on one machine: each in a fresh child process, one after the other, same prompts,
same seed, same settings. One row per model: file size, peak RSS, load time, prompt processing (pp) and
generation (tg) speed, TTFT, perplexity, and the answers.

Each model runs in its own process so that its peak resident memory (``ru_maxrss``) is its own and a crash
in one model costs only its row. The child (``python -m webui.lab.compare``) loads the model through the
same loader registry the app uses, measures, and prints JSON lines (stages, then ``{"row": ...}``).

- pp: a prompt of ``pp_tokens`` tokens (from the shipped text) and one new token; pp tok/s = prompt tokens / TTFT,
  like ``llama-bench``'s pp512.
- tg: each prompt in the model's chat format, greedy with the seed, ``max_new_tokens``; tok/s and TTFT are the
  means over the prompts (tok/s excludes the first token, as llama.cpp reports it).
- perplexity: :mod:`webui.lab.perplexity` on the shipped text (or ``ppl_text``), after the model is closed.

Results are saved as JSON in ``user_data/compare/``; :func:`to_csv`, :func:`to_markdown` and :func:`to_png`
export them.
"""

from __future__ import annotations

import csv
import io
import json
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from backends.base import CancelToken, SamplingParams
from webui.files import write_atomic
from webui.lab.child import emit, run_child
from webui.paths import UnsafeName, inside

DEFAULT_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write one sentence about a fireplace on a winter evening.",
]
COLUMNS = [
    ("model", "model"), ("quantization", "quant"), ("file_size_mb", "size MB"), ("peak_rss_mb", "peak RSS MB"),
    ("load_s", "load s"), ("pp_tokens_per_s", "pp tok/s"), ("tg_tokens_per_s", "tg tok/s"), ("ttft_ms", "TTFT ms"),
    ("ppl", "PPL"), ("ppl_error", "±"),
]  # fmt: skip
CHILD_TIMEOUT_S = 1800.0


class CompareError(ValueError):
    """The comparison cannot start (bad prompts file, no models) or its saved result cannot be read."""


@dataclass
class CompareSettings:
    """What every model gets alike."""

    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = 48
    seed: int = 0
    n_ctx: int = 1024
    pp_tokens: int = 512
    threads: int = 0
    perplexity: bool = True
    ppl_ctx: int = 512
    ppl_chunks: int = 0
    ppl_text: str | None = None  # None: the shipped text
    chat: bool = True  # False: prompts are continued as raw text (``bench --speed``: no template, no stops)

    def validate(self) -> None:
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise CompareError("give at least one non-empty prompt")
        if self.max_new_tokens < 2:
            raise CompareError("max_new_tokens must be at least 2 (tg speed needs a first and a last token)")
        if not 8 <= self.pp_tokens < self.n_ctx:
            raise CompareError(f"pp_tokens must be at least 8 and below n_ctx ({self.n_ctx})")


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: a JSON list of strings, or one prompt per non-empty line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompareError(f"cannot read prompts from {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CompareError(f"{path} is not a JSON list of prompts: {exc}") from None
        if not isinstance(found, list) or not all(isinstance(p, str) for p in found):
            raise CompareError(f"{path} must hold a JSON list of strings")
        return [p for p in found if p.strip()]
    return [line.strip() for line in text.splitlines() if line.strip()]


def compare(
    models: list[Path],
    settings: CompareSettings,
    progress: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
) -> dict:
    """Measure each model in turn (a child process each); return the result (rows in the order given)."""
    settings.validate()
    if not models:
        raise CompareError("give at least one model")
    rows = []
    started = datetime.now(timezone.utc)
    say = progress or (lambda _m: None)
    for i, path in enumerate(models):
        if cancel is not None and cancel.cancelled:
            break
        say(f"[{i + 1}/{len(models)}] {path.name}: starting")

        def on_message(message: dict, name: str = path.name, n: int = i) -> None:
            if "stage" in message:
                say(f"[{n + 1}/{len(models)}] {name}: {message['stage']}")

        outcome = run_child(
            "webui.lab.compare", {"model": str(path), "settings": asdict(settings)}, on_message, cancel,
            CHILD_TIMEOUT_S,
        )  # fmt: skip
        row = outcome.last("row").get("row")
        if row is None:
            error = outcome.last("error").get("error") or outcome.why()
            if outcome.cancelled:
                error = "cancelled"
            row = {"model": path.stem, "path": str(path), "error": error, "log": outcome.log[-5:]}
        rows.append(row)
    return {
        "version": 1,
        "created": started.isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "rows": rows,
        "machine": _machine(),
    }


def _machine() -> dict:
    import os
    import platform

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


# -- saving and exporting ---------------------------------------------------------------------------


def compare_dir(user_data: Path) -> Path:
    return user_data / "compare"


def save(result: dict, user_data: Path, name: str | None = None) -> Path:
    """Write ``result`` to ``user_data/compare/NAME.json`` (atomically); the default name is the time and models."""
    folder = compare_dir(user_data)
    folder.mkdir(parents=True, exist_ok=True)
    if name is None:
        stamp = result.get("created", "").replace(":", "").replace("-", "")[:15] or time.strftime("%Y%m%dT%H%M%S")
        models = "-vs-".join(_slug(r.get("model", "")) for r in result.get("rows", []))[:120]
        name = f"{stamp}-{models}" if models else stamp
    path = inside(folder, f"{name}.json" if not name.endswith(".json") else name, "result name")
    write_atomic(path, json.dumps(result, ensure_ascii=False, indent=2).encode("utf-8"))
    return path


def saved(user_data: Path) -> list[str]:
    """Names of the saved results, newest first."""
    folder = compare_dir(user_data)
    if not folder.is_dir():
        return []
    return sorted((p.stem for p in folder.glob("*.json")), reverse=True)


def load(user_data: Path, name: str) -> dict:
    try:
        path = inside(compare_dir(user_data), f"{name}.json", "result name")
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, UnsafeName) as exc:
        raise CompareError(f"cannot read the saved comparison {name!r}: {exc}") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise CompareError(f"{name!r} is not a saved comparison")
    return result


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")[:40] or "model"


def table(result: dict) -> tuple[list[str], list[list]]:
    """(headers, rows) of the numbers, one row per model; an errored model shows its error in the last column."""
    headers = [label for _, label in COLUMNS] + ["error"]
    rows = []
    for row in result.get("rows", []):
        rows.append([row.get(key) for key, _ in COLUMNS] + [row.get("error", "")])
    return headers, rows


def answers(result: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per prompt, one column per model."""
    models = [r.get("model", "?") for r in result.get("rows", [])]
    prompts = result.get("settings", {}).get("prompts", [])
    rows = []
    for i, prompt in enumerate(prompts):
        line = [prompt]
        for r in result.get("rows", []):
            found = r.get("answers") or []
            line.append(found[i] if i < len(found) else "")
        rows.append(line)
    return ["prompt", *models], rows


def to_csv(result: dict) -> str:
    headers, rows = table(result)
    a_headers, a_rows = answers(result)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(headers)
    writer.writerows(rows)
    writer.writerow([])
    writer.writerow(a_headers)
    writer.writerows(a_rows)
    return out.getvalue()


def _md(cell) -> str:
    text = "" if cell is None else str(cell)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(result: dict) -> str:
    headers, rows = table(result)
    if not any(r[-1] for r in rows):
        headers, rows = headers[:-1], [r[:-1] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    a_headers, a_rows = answers(result)
    lines += ["", "| " + " | ".join(_md(h) for h in a_headers) + " |", "|" + "---|" * len(a_headers)]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in a_rows]
    return "\n".join(lines) + "\n"


def to_png(result: dict, path: Path) -> Path:
    """A picture of the comparison: tg and pp tok/s bars per model, and the numbers under them (Pillow)."""
    from PIL import Image, ImageDraw

    rows = [r for r in result.get("rows", []) if not r.get("error")]
    width, bar_h, pad = 900, 22, 16
    height = pad * 4 + 40 + len(rows) * (2 * bar_h + 12) + 20 * (len(rows) + 2)
    image = Image.new("RGB", (width, max(height, 160)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), "Inglenook compare: tokens per second (tg blue, pp orange)", fill="black")
    peak = max([r.get("pp_tokens_per_s") or 0 for r in rows] + [r.get("tg_tokens_per_s") or 0 for r in rows] + [1])
    y = pad + 30
    for r in rows:
        draw.text((pad, y), str(r.get("model", ""))[:28], fill="black")
        for key, colour in (("tg_tokens_per_s", (52, 101, 164)), ("pp_tokens_per_s", (230, 140, 30))):
            value = r.get(key) or 0
            length = int((width - 360) * value / peak)
            draw.rectangle((250, y, 250 + max(length, 1), y + bar_h - 4), fill=colour)
            draw.text((256 + length, y + 2), f"{value:.1f}", fill="black")
            y += bar_h
        y += 12
    y += 10
    headers, table_rows = table(result)
    column = (width - 190 - pad) // max(len(headers) - 2, 1)  # one fixed-width column per number
    for i, head in enumerate(headers[1:-1]):
        draw.text((190 + i * column, y), head, fill="black")
    for row in table_rows:
        y += 20
        draw.text((pad, y), str(row[0])[:26], fill="black")
        for i, cell in enumerate(row[1:-1]):
            draw.text((190 + i * column, y), "-" if cell is None else str(cell), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG")
    return path


# -- the child process ------------------------------------------------------------------------------


def _mb(n: float | None) -> float | None:
    return round(n / 2**20, 1) if n else None


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure(path: Path, settings: CompareSettings) -> dict:
    """In the child: load ``path``, measure it, return its row."""
    from backends.base import CancelToken as Cancel
    from backends.registry import LoaderRegistry
    from webui.lab.perplexity import default_text, perplexity
    from webui.templates.render import build_chat_prompt

    text_name, text = default_text()
    if settings.ppl_text is not None:
        text_name, text = "given text", settings.ppl_text
    base_rss = _peak_rss()
    loader = LoaderRegistry().pick(path)
    load_settings = loader.settings_type(n_ctx=settings.n_ctx, threads=settings.threads)
    emit({"stage": f"loading with {loader.name}"})
    start = time.perf_counter()
    model = loader.load(path, load_settings)
    load_s = time.perf_counter() - start
    info = model.info
    row: dict = {
        "model": info.name, "path": str(path), "loader": info.loader, "quantization": info.quantization,
        "file_size_mb": _mb(_size(path)), "load_s": round(load_s, 3),
    }  # fmt: skip
    try:
        emit({"stage": f"prompt processing ({settings.pp_tokens} tokens)"})
        tokens = model.tokenize(text, add_special=False)[: settings.pp_tokens]
        pp_prompt = model.detokenize(tokens)
        params = SamplingParams(temperature=0, max_new_tokens=1, seed=settings.seed)
        usage = _final(model.generate(pp_prompt, params, Cancel())).usage
        row["pp_tokens"] = usage.prompt_tokens
        row["pp_tokens_per_s"] = round(usage.prompt_tokens / usage.ttft_s, 1) if usage.ttft_s else None
        ttfts, speeds, texts = [], [], []
        for i, prompt in enumerate(settings.prompts):
            emit({"stage": f"prompt {i + 1} of {len(settings.prompts)}"})
            text_in, stops = prompt, []
            if settings.chat:
                chat = build_chat_prompt([{"role": "user", "content": prompt}], info)
                text_in, stops = chat.text, list(chat.stop)
            params = SamplingParams(
                temperature=0, max_new_tokens=settings.max_new_tokens, seed=settings.seed, stop=stops,
                ban_eos_token=not settings.chat,
            )  # fmt: skip
            text_out, last = "", None
            for chunk in model.generate(text_in, params, Cancel()):
                text_out += chunk.text
                if chunk.finish_reason:
                    last = chunk
            texts.append(text_out.strip())
            if last is not None and last.usage is not None:
                ttfts.append(last.usage.ttft_s)
                if last.usage.completion_tokens > 1:
                    speeds.append(last.usage.tokens_per_s)
        row["answers"] = texts
        row["ttft_ms"] = round(1000 * sum(ttfts) / len(ttfts), 1) if ttfts else None
        row["tg_tokens_per_s"] = round(sum(speeds) / len(speeds), 2) if speeds else None
        row["tg_tokens"] = last.usage.completion_tokens if last is not None and last.usage else 0
    finally:
        model.close()
    if settings.perplexity:
        emit({"stage": f"perplexity (ctx {settings.ppl_ctx})"})

        def on_window(done: int, total: int, ppl: float) -> None:
            emit({"stage": f"perplexity window {done}/{total}: {ppl:.3f}"})

        result = perplexity(
            path, text, settings.ppl_ctx, settings.threads, on_window, text_name=text_name, chunks=settings.ppl_chunks
        )
        row["ppl"], row["ppl_error"] = round(result.ppl, 4), round(result.error, 4)
        row["ppl_windows"] = result.windows
    row["peak_rss_mb"] = _mb(_peak_rss())
    row["base_rss_mb"] = _mb(base_rss)
    return row


def _final(chunks):
    last = None
    for chunk in chunks:
        if chunk.finish_reason:
            last = chunk
    if last is None or last.usage is None:
        raise RuntimeError("the model ended without a final chunk")
    return last


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _child(request: dict) -> int:
    settings = CompareSettings(**request["settings"])
    try:
        emit({"row": measure(Path(request["model"]), settings)})
    except Exception as exc:  # reported as the model's row error; the parent goes on with the next model
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.argv[1])))
