"""The ``inglenook`` command: serve the UI, run a model in the terminal, benchmark.

This is where the one :class:`~webui.app.App` of a process is built from the
command line and handed to whatever the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from backends.base import CancelToken, ModelInfo, ModelLoadError, SamplingParams
from webui import __version__
from webui.app import App
from webui.chat.reply import Reply, format_stats
from webui.chat.sampling import resolve_params, rule_settings
from webui.chat.service import TurnOptions
from webui.cli import bench as cli_bench
from webui.cli import characters as cli_characters
from webui.cli import doctor as cli_doctor
from webui.cli import extensions as cli_extensions
from webui.cli import hub as cli_hub
from webui.cli import lab as cli_lab
from webui.cli import loaders as cli_loaders
from webui.cli import models as cli_models
from webui.cli import presets as cli_presets
from webui.cli import remotes as cli_remotes
from webui.cli.options import add_model_options, add_models_dir, add_serve_options, settings_from
from webui.logs import setup_logging
from webui.paths import UnsafeName
from webui.presets import PresetStore
from webui.templates.prefs import TemplatePrefs
from webui.templates.render import build_chat_prompt

SUBCOMMANDS = (
    "serve", "run", "chat", "bench", "templates", "characters", "loaders", "presets", "extensions", "models",
    "pull", "hub", "doctor", "remotes",
    *cli_lab.COMMANDS,
)  # fmt: skip


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port for the web UI (default: 7860)")
    p.add_argument(
        "--user-data", type=Path, default=Path("user_data"), help="folder for chats and settings (default: ./user_data)"
    )
    p.add_argument(
        "--stream-interval-ms", type=int, default=50,
        help="at most one streamed update per this many ms, to the page and to API clients; the text is "
        "never cut, only grouped, and fewer updates leave more CPU to the model (default: 50; 0 = every token)",
    )  # fmt: skip
    add_model_options(p)
    add_serve_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inglenook",
        allow_abbrev=False,  # else "bench --api" is read as an abbreviation of the top level's --api-key
        description="Inglenook: chat with local LLMs in your browser. With no command, 'serve' runs "
        "(the options below are serve's).",
    )
    parser.add_argument("--version", action="version", version=f"inglenook {__version__}")
    _serve_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")

    serve = sub.add_parser("serve", help="start the web UI (the default command)")
    _serve_options(serve)

    run = sub.add_parser(
        "run",
        aliases=["chat"],
        help="one-shot completion, or an interactive chat when no prompt is given ('chat' = 'run --chat')",
        description="MODEL is a path, a name in the models folder, or 'default'. With PROMPT: print its "
        "completion as it streams (raw text continuation; --chat wraps it in the model's chat format). "
        "Without PROMPT: an interactive chat (/bye or Ctrl-D to quit, Ctrl-C stops a reply).",
    )
    run.add_argument("model", nargs="?", default="default", help="model (default: the embedded default)")
    run.add_argument("prompt", nargs="?", default=None, help="text to complete; omit for an interactive chat")
    add_model_options(run, with_model=False)
    run.add_argument(
        "--user-data", type=Path, default=Path("user_data"),
        help="folder of your presets, saved model settings and extensions (default: ./user_data)",
    )  # fmt: skip
    run.add_argument("--json", action="store_true", help="print one JSON object with the text and the stats")
    run.add_argument("--chat", action="store_true", help="treat PROMPT as a chat message (use the chat format)")
    run.add_argument("--system", default="", help="system prompt for chat")
    run.add_argument(
        "--preset", default=None, help="sampling preset to start from (see 'presets list'); the flags below override it"
    )
    run.add_argument("--grammar", default=None, help="GBNF grammar the output must follow: a grammar name or a file")
    run.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")
    run.add_argument("--top-p", type=float, default=None)
    run.add_argument("--top-k", type=int, default=None)
    run.add_argument("--min-p", type=float, default=None)
    run.add_argument("--repetition-penalty", type=float, default=None)
    run.add_argument("--max-tokens", type=int, default=None, help="maximum new tokens (default: 512)")
    run.add_argument("--seed", type=int, default=None, help="random seed for reproducible output (-1 = random)")
    run.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not printed")

    cli_bench.add_parser(sub)

    templates = sub.add_parser("templates", help="list prompt templates, or print the exact prompt one produces")
    tsub = templates.add_subparsers(dest="templates_command", metavar="{list,render}", required=True)
    tlist = tsub.add_parser("list", help="the templates in presets/templates/ and where each comes from")
    tlist.add_argument("--json", action="store_true", help="print a JSON list of {name, source}")
    render = tsub.add_parser(
        "render",
        help="print the exact prompt for a conversation",
        description="TEMPLATE_OR_MODEL is a template name (see 'templates list') or a model (a path, a name in the "
        "models folder, or 'default'): a model gets the template the selection chooses for it, read from its file "
        "without loading weights. The prompt goes to stdout unchanged; the template, the rule that chose it and "
        "the stop strings go to stderr.",
    )
    render.add_argument("target", metavar="TEMPLATE_OR_MODEL")
    render.add_argument(
        "--messages", required=True, type=Path, help='JSON file: [{"role": ..., "content": ...}, ...] ("-" = stdin)'
    )
    render.add_argument("--no-generation-prompt", action="store_true", help="do not open the assistant's turn")
    add_models_dir(render)
    cli_characters.add_parser(sub)
    cli_loaders.add_parser(sub)
    cli_presets.add_parser(sub)
    cli_remotes.add_parser(sub)
    cli_extensions.add_parser(sub)
    cli_models.add_parser(sub)
    cli_hub.add_parser(sub)
    cli_doctor.add_parser(sub)
    cli_lab.add_parsers(sub)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keeps_file = args.command in ("serve", "run", "chat", None)  # these own a user_data folder
    setup_logging(getattr(args, "log_level", "info"), args.user_data if keeps_file else None)
    try:
        if args.command in ("run", "chat"):
            args.chat = args.chat or args.command == "chat"
            return cmd_run(args)
        if args.command == "templates":
            return cmd_templates(args)
        if args.command == "characters":
            return cli_characters.run(args)
        if args.command == "loaders":
            return cli_loaders.run(args)
        if args.command == "presets":
            return cli_presets.run(args)
        if args.command == "remotes":
            return cli_remotes.run(args)
        if args.command == "extensions":
            return cli_extensions.run(args)
        if args.command == "models":
            return cli_models.run(args)
        if args.command in ("pull", "hub"):
            return cli_hub.run_pull(args) if args.command == "pull" else cli_hub.run_hub(args)
        if args.command == "doctor":
            return cli_doctor.run(args)
        if args.command == "bench":
            return cli_bench.run(args)
        if args.command in cli_lab.COMMANDS:
            return cli_lab.run(args)
        return cmd_serve(args)
    except (ModelLoadError, UnsafeName, ValueError) as exc:  # TemplateError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def cmd_serve(args: argparse.Namespace) -> int:
    from webui.server import serve

    app = App.create(settings_from(args))
    return serve(app)


def cmd_templates(args: argparse.Namespace) -> int:
    from webui.templates.library import get_template, list_templates, template_names

    if args.templates_command == "list":
        found = [{"name": t.name, "source": t.source} for t in list_templates()]
        if args.json:
            print(json.dumps(found, ensure_ascii=False, indent=2))
        else:
            width = max((len(t["name"]) for t in found), default=0)
            print("\n".join(f"{t['name']:<{width}}  {t['source']}" for t in found))
        return 0
    messages = _read_messages(args.messages)
    if args.target.lower() in (n.lower() for n in template_names()):
        info, choice = ModelInfo(name=get_template(args.target).name, loader="", path=""), args.target
    else:
        info, choice = _template_info(args.target, args.models_dir), None
    prompt = build_chat_prompt(messages, info, not args.no_generation_prompt, choice=choice)
    sys.stdout.write(prompt.text)
    sys.stdout.flush()
    print(
        f"\n[template {prompt.template} ({prompt.chosen_by}); stop strings {json.dumps(prompt.stop)}]", file=sys.stderr
    )
    return 0


def _read_messages(path: Path) -> list[dict]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read messages from {path}: {exc}") from None
    data = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise ValueError(f'{path} must hold a JSON list of {{"role": ..., "content": ...}} objects')
    return data


def _template_info(spec: str, models_dir: Path) -> ModelInfo:
    from webui.models.folder import resolve_model
    from webui.templates.library import model_template_info

    return model_template_info(resolve_model(spec, models_dir))


def _run_params(args: argparse.Namespace, info: ModelInfo, store: PresetStore) -> SamplingParams:
    """The sampling parameters of ``inglenook run``, by the policy every face uses (webui.chat.sampling):
    the default (or, with --preset, neutral) → the model's models.yaml rule → --preset → the flags given."""
    preset = store.load(args.preset) if args.preset else None
    if preset is not None and preset.warning:
        print(f"warning: {preset.warning}", file=sys.stderr)
    flags = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "max_new_tokens": args.max_tokens,
        "seed": args.seed,
    }
    explicit = {k: v for k, v in flags.items() if v is not None}
    if args.grammar:
        grammar = Path(args.grammar)
        try:
            is_file = grammar.is_file()
        except (OSError, ValueError):  # a name too long (or odd) to be a path: a grammar name, then
            is_file = False
        explicit["grammar"] = grammar.read_text() if is_file else store.grammar(args.grammar)
    rule = rule_settings(info, TemplatePrefs(args.user_data).get(info.name))
    resolved = resolve_params(rule=rule, preset=preset, explicit=explicit)
    for note in resolved.unknown:
        print(f"warning: not a sampling parameter, ignored: {note}", file=sys.stderr)
    params = resolved.params
    if args.stop:
        params = replace(params, stop=[*params.stop, *args.stop])
    params.validate()
    return params


def cmd_run(args: argparse.Namespace) -> int:
    store = PresetStore(args.user_data)
    if args.preset:
        store.load(args.preset)  # a preset that does not exist fails before the model loads
    app = App.create(settings_from(args))
    info = app.load_model(args.model, args.loader)
    try:
        params = _run_params(args, info, store)
        if args.prompt is None:
            return _interactive(app, params, args.system)
        if args.chat:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            chosen = TemplatePrefs(app.settings.user_data).get(info.name)  # the template picked in the UI
            replies = app.chat.stream(
                [*messages, {"role": "user", "content": args.prompt}], params, TurnOptions(template=chosen)
            )
        else:
            replies = app.chat.complete(args.prompt, params)
        final = _print_stream(replies, echo=not args.json)
        if args.json:
            print(json.dumps(_run_result(info.name, info.loader, final), ensure_ascii=False))
        elif final.usage:
            print(f"\n[{format_stats(final.usage, final.finish_reason)}]", file=sys.stderr)
        if final.ignored_params:
            print(f"note: {info.loader} ignores {', '.join(final.ignored_params)}", file=sys.stderr)
        if final.error:
            print(f"error: {final.error}", file=sys.stderr)
            return 1
        return 0
    finally:
        app.close()


def _run_result(model: str, loader: str, final: Reply) -> dict:
    return {
        "model": model,
        "loader": loader,
        "text": final.text,
        "finish_reason": final.finish_reason,
        "error": final.error,
        "ignored_params": final.ignored_params,
        "usage": final.usage.as_dict() if final.usage else None,
    }


def _print_stream(replies, echo: bool) -> Reply:
    shown = 0
    final = Reply(done=True)
    for reply in replies:
        if echo and len(reply.text) > shown:
            sys.stdout.write(reply.text[shown:])
            sys.stdout.flush()
            shown = len(reply.text)
        final = reply
    return final


def _interactive(app: App, params: SamplingParams, system: str) -> int:
    info = app.engine.info
    print(f"Chatting with {info.name} ({info.loader}). /bye or Ctrl-D to quit, /clear to forget, Ctrl-C stops a reply.")
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return 0
        if text == "/clear":
            messages = messages[:1] if system else []
            print("(conversation cleared)")
            continue
        messages.append({"role": "user", "content": text})
        cancel = CancelToken()
        chosen = TemplatePrefs(app.settings.user_data).get(info.name)  # the template picked in the UI
        replies = app.chat.stream(messages, params, TurnOptions(template=chosen, cancel=cancel))
        final = Reply(done=True)
        try:
            final = _print_stream(replies, echo=True)
        except KeyboardInterrupt:  # the generator is closed, which ends the turn and frees the engine
            cancel.cancel()
            final = Reply(done=True, error="stopped")
        print()
        if final.error:
            print(f"error: {final.error}", file=sys.stderr)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": final.raw_text or final.text})
        print(f"[{format_stats(final.usage, final.finish_reason)}]", file=sys.stderr)
