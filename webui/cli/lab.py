"""``inglenook quantize``, ``perplexity`` and ``compare``: the quantization lab on the command line.

The work is in :mod:`webui.lab`; this module parses flags, resolves model names in the models folder,
prints progress to stderr and the result to stdout (``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backends.base import ModelLoadError
from webui.cli.options import add_models_dir
from webui.models.folder import resolve_model

COMMANDS = ("quantize", "perplexity", "compare", "convert")


def add_parsers(sub) -> None:
    q = sub.add_parser(
        "quantize",
        help="make a quantized GGUF with llama.cpp (llama_model_quantize), into the models folder",
        description="Quantize IN (a GGUF path or a name in the models folder) to --type. The new file goes into "
        "the models folder; it runs in a child process, and Ctrl-C leaves no partial file.",
    )
    q.add_argument("model", metavar="IN", help="GGUF file to quantize (path or name in the models folder)")
    q.add_argument("--type", dest="qtype", default=None, help="target type, e.g. Q4_K_M (see --list-types)")
    q.add_argument("--out", default=None, help="output file name in the models folder (default: NAME-TYPE.gguf)")
    q.add_argument("--imatrix", type=Path, default=None, help="importance matrix (llama-imatrix's GGUF output)")
    q.add_argument("--threads", type=int, default=0, help="threads (default: all cores)")
    q.add_argument("--list-types", action="store_true", help="print the types llama.cpp offers and exit")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    add_models_dir(q)

    p = sub.add_parser(
        "perplexity",
        help="perplexity of a model on a text, as llama-perplexity measures it",
        description="Non-overlapping windows of --ctx tokens, the second half of each scored (llama.cpp's "
        "method). GGUF files through llama.cpp, model folders through transformers (torch).",
    )
    p.add_argument("model", help="model (path, name in the models folder, or 'default')")
    p.add_argument("--text", type=Path, default=None, help="UTF-8 text file (default: a shipped public-domain text)")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (default: 512)")
    p.add_argument("--chunks", type=int, default=0, help="score only the first N windows (default: all)")
    p.add_argument("--threads", type=int, default=0, help="threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_models_dir(p)

    v = sub.add_parser(
        "convert",
        help="a Hugging Face safetensors folder to GGUF with llama.cpp's own converter, then optionally quantize",
        description="Runs llama.cpp's convert_hf_to_gguf.py (fetched once with pip from llama-cpp-python's "
        "source, matching the installed version; or from $INGLENOOK_LLAMA_CPP) into the models folder.",
    )
    v.add_argument("folder", type=Path, help="model folder with config.json and *.safetensors")
    v.add_argument("--outtype", default="f16", help="the converter's output type: f16 (default), bf16, f32, q8_0")
    v.add_argument("--out", default=None, help="output file name in the models folder (default: FOLDER-TYPE.gguf)")
    v.add_argument("--quantize", dest="qtype", default=None, help="then quantize to this type (e.g. Q4_K_M)")
    v.add_argument("--keep", action="store_true", help="with --quantize: keep the converted file too")
    add_models_dir(v)

    c = sub.add_parser(
        "compare",
        help="run several models or quants one at a time on the same prompts: one table",
        description="Each model runs in a fresh process (so its peak RSS is its own), same prompts, seed and "
        "settings. Prints size, peak RSS, load time, pp and tg tok/s, TTFT, perplexity and the answers; the "
        "result is saved in USER_DATA/compare/.",
    )
    c.add_argument("models", nargs="+", metavar="MODEL_OR_QUANT")
    c.add_argument("--prompts", type=Path, default=None, help="file of prompts: one per line, or a JSON list")
    c.add_argument("--max-tokens", type=int, default=48, help="new tokens per answer (default: 48)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--n-ctx", type=int, default=1024, help="context to load each model with (default: 1024)")
    c.add_argument("--pp", type=int, default=512, help="prompt tokens for the pp speed (default: 512)")
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--ppl-ctx", type=int, default=512, help="perplexity window (default: 512)")
    c.add_argument("--ppl-chunks", type=int, default=0, help="perplexity windows to score (default: all)")
    c.add_argument("--ppl-text", type=Path, default=None, help="text for the perplexity (default: the shipped one)")
    c.add_argument("--no-ppl", action="store_true", help="skip the perplexity")
    c.add_argument("--user-data", type=Path, default=Path("user_data"), help="where compare/ results are saved")
    c.add_argument("--png", type=Path, default=None, help="also write a PNG chart to this path")
    fmt = c.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the result as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the table and the answers as CSV")
    fmt.add_argument("--markdown", action="store_true", help="print Markdown tables (the default is a text table)")
    add_models_dir(c)


def run(args: argparse.Namespace) -> int:
    if args.command == "quantize":
        return cmd_quantize(args)
    if args.command == "perplexity":
        return cmd_perplexity(args)
    if args.command == "convert":
        return cmd_convert(args)
    return cmd_compare(args)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_quantize(args: argparse.Namespace) -> int:
    from backends.base import CancelToken
    from webui.lab.quantize import QuantizeCancelled, QuantizeError, plan, quant_types
    from webui.lab.quantize import run as run_quantize

    if args.list_types:
        types = quant_types()
        print(json.dumps(types) if args.json else "\n".join(types))
        return 0
    if not args.qtype:
        _say("error: --type is required (see --list-types)")
        return 2
    try:
        job = plan(resolve_model(args.model, args.models_dir), args.qtype, args.models_dir, args.out, args.imatrix)
    except (QuantizeError, ModelLoadError) as exc:
        _say(f"error: {exc}")
        return 1
    for warning in job.warnings:
        _say(f"warning: {warning}")
    _say(f"quantizing {job.source.name} -> {job.target.name} ({job.qtype}) ...")
    cancel = CancelToken()
    shown = {"last": -1}

    def progress(i: int, n: int, tensor: str) -> None:
        percent = 100 * i // max(n, 1)
        if percent // 10 != shown["last"]:
            shown["last"] = percent // 10
            _say(f"  {percent:3d} % tensor {i}/{n} {tensor}")

    try:
        result = run_quantize(job, progress, cancel, args.threads)
    except KeyboardInterrupt:
        cancel.cancel()
        _say("cancelled; no file was written")
        return 130
    except QuantizeCancelled as exc:
        _say(str(exc))
        return 130
    except QuantizeError as exc:
        _say(f"error: {exc}")
        return 1
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(
            f"{result.target} ({result.qtype}, {result.size / 2**20:.1f} MiB from {result.source_size / 2**20:.1f}"
            f" MiB, {result.seconds:.1f} s)"
        )
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from webui.lab.perplexity import PerplexityError, default_text, perplexity

    try:
        path = resolve_model(args.model, args.models_dir)
        if args.text is not None:
            text_name, text = str(args.text), args.text.read_text(encoding="utf-8")
        else:
            text_name, text = default_text()
    except (OSError, UnicodeDecodeError) as exc:
        _say(f"error: cannot read {args.text}: {exc}")
        return 1
    except ModelLoadError as exc:
        _say(f"error: {exc}")
        return 1

    def progress(done: int, total: int, ppl: float) -> None:
        _say(f"  window {done}/{total}: PPL so far {ppl:.4f}")

    _say(f"perplexity of {path.name} on {text_name}, ctx {args.ctx} ...")
    try:
        result = perplexity(path, text, args.ctx, args.threads, progress, text_name=text_name, chunks=args.chunks)
    except (PerplexityError, ModelLoadError) as exc:
        _say(f"error: {exc}")
        return 1
    print(json.dumps(result.as_dict()) if args.json else f"{result.model}: {result.line()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from webui.lab.compare import (
        CompareError,
        CompareSettings,
        compare,
        read_prompts,
        save,
        to_csv,
        to_markdown,
        to_png,
    )

    try:
        paths = [resolve_model(m, args.models_dir) for m in args.models]
        settings = CompareSettings(
            max_new_tokens=args.max_tokens, seed=args.seed, n_ctx=args.n_ctx, pp_tokens=args.pp,
            threads=args.threads, perplexity=not args.no_ppl, ppl_ctx=args.ppl_ctx, ppl_chunks=args.ppl_chunks,
        )  # fmt: skip
        if args.prompts is not None:
            settings.prompts = read_prompts(args.prompts)
        if args.ppl_text is not None:
            settings.ppl_text = args.ppl_text.read_text(encoding="utf-8")
        result = compare(paths, settings, _say)
    except (CompareError, ModelLoadError) as exc:
        _say(f"error: {exc}")
        return 1
    except (OSError, UnicodeDecodeError) as exc:
        _say(f"error: {exc}")
        return 1
    saved_at = save(result, args.user_data)
    _say(f"saved {saved_at}")
    if args.png:
        _say(f"chart {to_png(result, args.png)}")
    if args.json:
        print(json.dumps({**result, "saved": str(saved_at)}, ensure_ascii=False))
    elif args.csv:
        sys.stdout.write(to_csv(result))
    else:
        sys.stdout.write(to_markdown(result))
    failed = [r["model"] for r in result["rows"] if r.get("error")]
    if failed:
        _say(f"failed: {', '.join(failed)}")
    return 1 if failed and len(failed) == len(result["rows"]) else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from webui.lab.convert import ConvertError, convert
    from webui.lab.quantize import QuantizeError, plan
    from webui.lab.quantize import run as run_quantize

    try:
        converted = convert(args.folder, args.models_dir, args.outtype, None if args.qtype else args.out, _say)
    except ConvertError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("cancelled; no file was written")
        return 130
    if not args.qtype:
        print(converted)
        return 0
    try:
        job = plan(converted, args.qtype, args.models_dir, args.out)
        result = run_quantize(job)
    except QuantizeError as exc:
        _say(f"error: {exc} (the converted file {converted} is kept)")
        return 1
    if not args.keep:
        converted.unlink()
    print(result.target)
    return 0
