"""The Chat service: the one path from a user's message to a streamed reply, for every face.

:class:`Chat` owns what a generation needs besides its text — the engine, the extension hooks, the
conversation store — built once by :class:`webui.app.App`. The UI, the API and the CLI call its methods, so a
prompt format, a chat mode or an extension acts the same everywhere. How a reply is asked for (system prompt,
template, "start reply with", character, mode, model, cancel) travels as one :class:`TurnOptions` value.

Each action that changes a conversation saves it atomically as soon as the change is made: the user's message
before generation starts, a reply when it ends (stopped or not); a failed one changes nothing.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import replace
from pathlib import Path

from backends.base import CancelToken, GenerationError, ModelInfo, ModelLoadError, ModelNotLoaded, SamplingParams
from webui.chat.conversation import DENIED, INVALID, PENDING, TOOL, TOOL_CALL, TOOL_ROLES
from webui.chat.history import Conversation, HistoryError, HistoryStore
from webui.chat.modes import CHAT_INSTRUCT, INSTRUCT
from webui.chat.options import PLAIN, TurnOptions
from webui.chat.prompting import PromptPlan, plan_prompt
from webui.chat.reply import MAX_MESSAGE_CHARS, Reply, format_stats, prompt_messages
from webui.chat.toolbox import (
    DENIED_TEXT,
    ERROR,
    MAX_TOOL_ROUNDS,
    NOT_RUN_TEXT,
    Toolbox,
    auto_approve,
    call_text,
    tools_enabled,
)
from webui.chat.tools import (
    CallFilter,
    ToolCallError,
    ToolChoice,
    ToolError,
    parse_tool_calls,
    tool_format,
    tool_grammar,
    validate_call,
)
from webui.engine import Engine
from webui.hookspecs import ChatHooks


class Chat:
    """Generates replies: the engine, the extension hooks around every generation, and the saved conversations."""

    def __init__(self, engine: Engine, history: HistoryStore, hooks: ChatHooks | None = None) -> None:
        self.engine = engine
        self.history = history
        self.hooks = hooks if hooks is not None else ChatHooks()

    # ------------------------------------------------------------------ streams without a saved conversation

    def stream(
        self, messages: list[dict], params: SamplingParams, options: TurnOptions = PLAIN, *,
        impersonate: bool = False,
    ) -> Iterator[Reply]:  # fmt: skip
        """Stream the assistant's reply to ``messages`` (``{"role", "content"}`` dicts, last one the user's).

        ``impersonate`` makes the model write the user's next message instead. The oldest turns are left out
        when the conversation outgrows the context.
        """
        engine, prefix = self.engine, options.start_with
        mode, character = options.mode or INSTRUCT, options.character
        info = options.model or engine.info
        if info is None:
            yield _failed(ModelNotLoaded("no model is loaded"))
            return
        for m in [*messages, {"content": prefix}]:
            if len(m.get("content", "")) > MAX_MESSAGE_CHARS:
                yield Reply(done=True, error=f"a message is longer than {MAX_MESSAGE_CHARS:,} characters")
                return
        try:
            plan, head = self.prepare(messages, replace(options, mode=mode, model=info), params.max_new_tokens,
                                      impersonate=impersonate)  # fmt: skip
        except ValueError as exc:
            yield _failed(exc)
            return
        params = replace(params, stop=[*params.stop, *(s for s in plan.stop if s not in params.stop)])
        strip = mode == CHAT_INSTRUCT and character is not None and not head and not impersonate
        for reply in self._generate(plan.text, params, options.cancel, "chat", options.model):
            body = reply.text.lstrip() if strip else reply.text  # the prompt ends "Name:"; a space follows
            reply = replace(
                reply, text=head + body if body or not reply.error else body, prompt=plan,
                ignored_params=list(reply.ignored_params),
            )  # fmt: skip
            yield self._finished(reply, "chat", info.name) if reply.done and not impersonate else reply

    def prepare(
        self, messages: list[dict], options: TurnOptions, reserve: int = 0, *, impersonate: bool = False
    ) -> tuple[PromptPlan, str]:
        """(the exact prompt a chat reply is generated from, the text the reply starts with): the extensions'
        message hooks, the mode's rendering fitted into the context, then their prompt hook. The one place a
        chat prompt is made, so Show prompt and the token count show what is sent. Raises ValueError."""
        info = options.model or self.engine.info
        if info is None:
            raise ModelNotLoaded("no model is loaded")
        messages = self.hooks.chat_messages(messages, info.name)  # input, chat input, history modifiers
        plan = plan_prompt(self.engine, messages, replace(options, model=info), impersonate=impersonate,
                           reserve=reserve)  # fmt: skip
        if impersonate:  # an impersonation is the user's line: no custom prompt, bot prefix or output hook
            return plan, options.start_with
        text, bot_prefix = self.hooks.chat_prompt(plan.text, messages, info.name)  # custom prompt, bot prefix
        if text != plan.text:
            plan = replace(plan, text=text, tokens=self.engine.count_tokens(text))
        return plan, options.start_with + bot_prefix

    def preview(
        self, conversation: Conversation, options: TurnOptions = PLAIN, draft: str = "", *, max_new_tokens: int = 0
    ) -> PromptPlan | None:
        """The exact prompt the next send in ``conversation`` would generate from (with ``draft`` as the user's
        message, if any), extensions included. None when there is nothing to send yet; ValueError (the error
        the send would show) when it cannot be built."""
        messages = prompt_messages(conversation, options.system)
        if draft.strip():
            messages.append({"role": "user", "content": draft})
        if not any(m["role"] != "system" for m in messages):
            return None
        return self.prepare(messages, replace(options, mode=conversation.mode), max_new_tokens)[0]

    def complete(self, prompt: str, params: SamplingParams, options: TurnOptions = PLAIN) -> Iterator[Reply]:
        """Stream a raw continuation of ``prompt`` (the notebook, ``inglenook run``, the API); ``options``: its
        ``model`` and ``cancel``."""
        info = options.model or self.engine.info
        if info is None:
            yield _failed(ModelNotLoaded("no model is loaded"))
            return
        prompt = self.hooks.completion_prompt(prompt, info.name)  # input modifiers
        for reply in self._generate(prompt, params, options.cancel, "completion", options.model):
            yield self._finished(reply, "completion", info.name) if reply.done else reply

    # ------------------------------------------------------------------ a saved conversation

    def turn(
        self, conversation: Conversation, text: str, params: SamplingParams, options: TurnOptions = PLAIN
    ) -> Iterator[Reply]:
        """One exchange of a saved conversation (in its mode, spoken by ``options.character`` if given): the
        user's message is saved before generation starts, the reply (with its stats line) as soon as it ends,
        stopped or not. A crash loses at most the reply in flight. A reply that failed before producing any
        text takes its message back out. ``options.start_with`` is kept in the saved reply.
        """
        if not (text or "").strip():
            yield Reply(done=True, error="a message may not be empty")
            return
        self._settle(conversation, NOT_RUN_TEXT)  # a call left waiting gets its result before the new message
        try:
            conversation.append("user", text)
        except HistoryError as exc:
            yield Reply(done=True, error=str(exc))
            return
        self.history.save(conversation)
        if (box := self.toolbox(conversation)) is not None:
            yield from self._tool_rounds(conversation, params, options, box, first=True)
            return
        messages = prompt_messages(conversation, options.system)
        final = yield from self._reply_in(conversation, messages, params, options)
        if final.text.strip():
            conversation.append("assistant", final.text, format_stats(final.usage, final.finish_reason), final.raw_text)
        else:
            conversation.remove_last()
            final.error = final.error or "the model produced no text"
        self.history.save(conversation)
        yield final

    def regenerate(
        self, conversation: Conversation, params: SamplingParams, options: TurnOptions = PLAIN
    ) -> Iterator[Reply]:
        """A new version of the last reply; the older versions stay, to page back to
        (:func:`webui.chat.actions.page_version`).

        If the conversation ends with the user's message (its reply failed, was removed, or the message was
        just edited), a reply to it is generated. A regeneration that yields no text leaves the conversation
        as it was.
        """
        if not conversation.messages:
            yield Reply(done=True, error="nothing to regenerate: the conversation is empty")
            return
        if conversation.pending_calls():
            yield Reply(done=True, error="a tool call waits for approval: approve or deny it first")
            return
        replacing = conversation.messages[-1].role == "assistant"
        upto = len(conversation.messages) - 1 if replacing else None
        messages = prompt_messages(conversation, options.system, upto)
        final = yield from self._reply_in(conversation, messages, params, options)
        if final.text.strip():
            stats = format_stats(final.usage, final.finish_reason)
            if replacing:
                conversation.regenerate(final.text, stats, final.raw_text)
            else:
                conversation.append("assistant", final.text, stats, final.raw_text)
            self.history.save(conversation)
        else:
            final.error = final.error or "the model produced no text"
        yield final

    def continue_reply(
        self, conversation: Conversation, params: SamplingParams, options: TurnOptions = PLAIN
    ) -> Iterator[Reply]:
        """Extend the last reply where it ends: the model is prompted with the reply so far and goes on
        (``options.start_with`` is not used). ``Reply.text`` is the whole reply (old text + new); the shown
        version is replaced by it when done.
        """
        if not conversation.messages or conversation.messages[-1].role != "assistant":
            yield Reply(done=True, error="there is no reply to continue")
            return
        so_far = conversation.messages[-1].model_text
        messages = prompt_messages(conversation, options.system, len(conversation.messages) - 1)
        final = yield from self._reply_in(conversation, messages, params, replace(options, start_with=so_far))
        if final.text.strip() and final.text != so_far:
            conversation.update_reply(final.text, format_stats(final.usage, final.finish_reason), final.raw_text)
            self.history.save(conversation)
        elif not final.error:
            final.error = "the model had nothing to add"
        yield final

    def impersonate(
        self, conversation: Conversation, params: SamplingParams, options: TurnOptions = PLAIN
    ) -> Iterator[Reply]:
        """The model writes the user's next message (starting from ``options.start_with``, the draft already in
        the box). Nothing is saved: the text goes into the message box for the user to send, change or discard.
        """
        messages = prompt_messages(conversation, options.system)
        yield from self.stream(messages, params, replace(options, mode=conversation.mode), impersonate=True)

    # ------------------------------------------------------------------ tools in a saved conversation

    def toolbox(self, conversation: Conversation) -> Toolbox | None:
        """The tools the model is offered in ``conversation``: the active extensions' ones when the conversation
        has tools turned on, else None (an empty toolbox when it does but no extension offers any)."""
        if not tools_enabled(conversation):
            return None
        return Toolbox(tuple(self.hooks.tools()))

    def resolve_tools(
        self, conversation: Conversation, approve: bool, params: SamplingParams, options: TurnOptions = PLAIN
    ) -> Iterator[Reply]:
        """The user's answer to the calls waiting for approval: run them (``approve``) or refuse them (each gets
        the result "denied by user"); then the model goes on with the results, as in :meth:`turn`."""
        pending = conversation.pending_calls()
        if not pending:
            yield Reply(done=True, error="no tool call is waiting for approval")
            return
        box = self.toolbox(conversation) or Toolbox(())
        for message in pending:
            tool = message.tool or {}
            if approve:
                status, result = box.run(tool["name"], tool["arguments"])
            else:
                status, result = DENIED, DENIED_TEXT
            self._result(conversation, message, status, result)
        self.history.save(conversation)
        yield Reply()  # the results show before the model writes on
        yield from self._tool_rounds(conversation, params, options, box, first=False)

    def _settle(self, conversation: Conversation, text: str) -> None:
        """Give every call still waiting for approval the result ``text`` (they were not run)."""
        for message in conversation.pending_calls():
            self._result(conversation, message, DENIED, text)

    @staticmethod
    def _result(conversation: Conversation, call, status: str, text: str) -> None:
        """Mark ``call`` with ``status`` and add its result (``error`` results keep the call's status "ran")."""
        tool = call.tool
        tool["status"] = status if status in (DENIED, INVALID) else "ran"
        conversation.append(TOOL, text, tool={"id": tool["id"], "name": tool["name"], "status": status})

    def _tool_rounds(
        self, conversation: Conversation, params: SamplingParams, options: TurnOptions, box: Toolbox, first: bool
    ) -> Iterator[Reply]:
        """Replies with tools offered, until the model answers in text, a call waits for the user's approval, or
        :data:`MAX_TOOL_ROUNDS` calls in a row have run (then the tools are taken away and the model answers).
        ``options.tool_choice`` "required" (or a named function) makes the first reply a call, by grammar.
        Each call, result and reply is saved as it comes. ``first``: the user's message was just sent (a reply
        that fails without any text takes it back out)."""
        while True:
            if not first and options.cancel is not None and options.cancel.cancelled:  # Stop between rounds
                yield Reply(done=True, finish_reason="cancelled")
                return
            rounds = _rounds_since_user(conversation)
            offered = bool(box.tools) and rounds < MAX_TOOL_ROUNDS
            choice = ToolChoice("auto" if offered else "none", None, True)
            info = options.model or self.engine.info
            fmt = tool_format(info, options.template)[0] if info is not None else "generic"
            asked_params = params
            wanted = options.tool_choice
            if offered and rounds == 0 and wanted is not None and wanted.forced:  # a call is required: a grammar
                choice = ToolChoice("required", wanted.name, False)
                try:
                    asked_params = replace(params, grammar=tool_grammar(list(box.specs), fmt, choice))
                except ToolError as exc:
                    if first:
                        conversation.remove_last()
                        self.history.save(conversation)
                    yield Reply(done=True, error=str(exc), failure=exc)
                    return
            asked = replace(options, tools=box.specs if offered else (), tool_choice=choice)
            watch = CallFilter(fmt, list(box.specs), choice)
            final, shown, seen = Reply(done=True), "", 0
            for reply in self.stream(prompt_messages(conversation, options.system), asked_params, asked):
                final = reply
                if not reply.done:
                    shown += watch.feed(reply.text[seen:])  # a call being written is not shown as text
                    seen = len(reply.text)
                    yield replace(reply, text=shown, ignored_params=list(reply.ignored_params))
            note = "" if offered or not box.tools else (
                f"the model called tools {MAX_TOOL_ROUNDS} times in a row: it answers without them now"
            )  # fmt: skip
            stats = format_stats(final.usage, final.finish_reason)
            try:
                parsed = parse_tool_calls(final.raw_text or final.text, fmt) if offered else None
            except ToolCallError as exc:  # a call begun but broken: the text is kept, the error shown
                parsed, note = None, f"⚠️ the model's tool call could not be read: {exc}"
            if parsed is None or not parsed.calls:
                if final.text.strip():
                    conversation.append("assistant", final.text, stats, final.raw_text)
                elif first:
                    conversation.remove_last()
                    final.error = final.error or "the model produced no text"
                else:
                    final.error = final.error or "the model produced no text"
                self.history.save(conversation)
                yield replace(final, note=note, ignored_params=list(final.ignored_params))
                return
            first = False
            if parsed.content.strip():
                conversation.append("assistant", parsed.content)
            calls, problems = [], []
            for call in parsed.calls:
                try:
                    validate_call(call, list(box.specs))
                    status = PENDING
                except ToolCallError as exc:
                    status = INVALID
                    problems.append((call, f"error: {exc}"))
                facts = {"id": call.id, "name": call.name, "arguments": call.arguments, "status": status}
                calls.append(conversation.append(TOOL_CALL, call_text(call.name, call.arguments), tool=facts))
            for call, problem in problems:  # not run; the model reads why and may try again
                conversation.append(TOOL, problem, tool={"id": call.id, "name": call.name, "status": ERROR})
            calls[-1].versions[0].stats = stats
            waiting = [m for m in calls if m.tool["status"] == PENDING]
            if waiting and auto_approve(conversation):
                self.history.save(conversation)
                yield Reply(text="")  # the calls show while they run
                for message in waiting:
                    self._result(conversation, message, *box.run(message.tool["name"], message.tool["arguments"]))
                waiting = []
            self.history.save(conversation)
            if waiting:
                names = ", ".join(call_text(m.tool["name"], m.tool["arguments"]) for m in waiting)
                yield replace(final, text="", note=f"Run {names}? Approve or deny the call.",
                              ignored_params=list(final.ignored_params))  # fmt: skip
                return
            yield Reply(text="")

    # ------------------------------------------------------------------ inside

    def _reply_in(
        self, conversation: Conversation, messages: list[dict], params: SamplingParams, options: TurnOptions
    ) -> Generator[Reply, None, Reply]:
        """Stream a reply in ``conversation``'s mode: yield the updates, return the final Reply (``yield from``),
        so an action that saves the conversation can look at it after the stream."""
        final = Reply(done=True)
        for reply in self.stream(messages, params, replace(options, mode=conversation.mode)):
            final = reply
            if not reply.done:
                yield reply
        return final

    def _generate(
        self, prompt: str, params: SamplingParams, cancel: CancelToken | None, mode: str, model: ModelInfo | None
    ) -> Iterator[Reply]:
        """Generate from a finished prompt (with ``model``, default the active one); extensions see the
        parameters first. The caller runs the output hooks on the last reply (:meth:`_finished`)."""
        engine = self.engine
        info = model or engine.info
        params = self.hooks.sampling(params, mode, info.name if info else None)  # state modifiers
        reply = Reply(ignored_params=engine.ignored_params(params))
        try:
            for chunk in engine.generate(prompt, params, cancel, Path(model.path) if model else None):
                if chunk.text:
                    reply.text += chunk.text
                    if chunk.logprobs:
                        reply.logprobs += chunk.logprobs
                    yield reply
                if chunk.finish_reason:
                    reply.finish_reason, reply.usage = chunk.finish_reason, chunk.usage
        except (GenerationError, ModelLoadError, ValueError) as exc:
            reply.error, reply.failure = str(exc), exc
        reply.done = True
        yield reply

    def _finished(self, reply: Reply, mode: str, model: str | None) -> Reply:
        """The last reply as front ends show and save it: extensions' output modifiers applied, the
        model's own text kept in ``raw_text``."""
        text = self.hooks.output(reply.text, reply.usage, reply.finish_reason, mode, model)
        return replace(reply, text=text, raw_text=reply.text, ignored_params=list(reply.ignored_params))


def _rounds_since_user(conversation: Conversation) -> int:
    """How many replies since the user's last message were tool calls (a round: one reply's calls)."""
    rounds, previous = 0, None
    for message in reversed(conversation.messages):
        if message.role == "user":
            break
        if message.role == TOOL_CALL and previous != TOOL_CALL:
            rounds += 1
        previous = message.role if message.role in TOOL_ROLES else None
    return rounds


def _failed(exc: Exception) -> Reply:
    """A reply that ends before generating: ``exc``'s message, and ``exc`` for faces that tell failures apart."""
    return Reply(done=True, error=str(exc), failure=exc)
