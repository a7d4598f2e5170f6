"""How a reply is asked for, besides the messages and the sampling parameters: one value instead of eight
parameters threaded through the chat core (:mod:`webui.chat.service`, :mod:`webui.chat.prompting`,
:mod:`webui.chat.actions`)."""

from __future__ import annotations

from dataclasses import dataclass

from backends.base import CancelToken, ModelInfo
from webui.characters.store import Character
from webui.chat.tools import Tool, ToolChoice


@dataclass(frozen=True)
class TurnOptions:
    """How a reply is asked for, besides the messages and the sampling parameters.

    ``template``: the user's choice of prompt template (None: chosen for the model). ``start_with``: text the
    reply starts with (kept in the reply; for an impersonation, the draft the user's line starts with).
    ``mode``: the chat mode (:mod:`webui.chat.modes`; None: instruct, or a conversation's own mode),
    spoken by ``character``. ``model``: the model to answer with (the API's ``model`` field; default the
    active one). ``cancel``: set it to stop the reply. ``tools``: functions the model may call, as
    ``tool_choice`` allows (:mod:`webui.chat.tools`; None: auto when there are tools).
    """

    system: str = ""
    template: str | None = None
    start_with: str = ""
    character: Character | None = None
    mode: str | None = None
    model: ModelInfo | None = None
    cancel: CancelToken | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None


PLAIN = TurnOptions()  # the defaults (frozen, so one shared value is safe): instruct, the active model, no cancel
