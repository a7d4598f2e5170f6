"""The one module an Inglenook extension imports.

Everything an extension receives is defined here (or re-exported from here), so the
rest of Inglenook can be refactored without breaking extensions. A minimal extension::

    # extensions/shout/extension.py   (with extensions/shout/extension.yaml)
    from webui.extension_api import hookimpl

    @hookimpl
    def output_modifier(text, context):
        return text.upper()

An extension offers the model a function (in chats with tools on; the user approves each call) through the
``tools`` hook, returning :class:`ExtensionTool` s (name, description, JSON Schema, callable).

Every hook is optional and takes any subset of its arguments (by name). A modifier
returns the new value, or ``None`` to leave it unchanged. See ``webui/hookspecs.py``
for the full list and README.md (``## Extensions``) for installing and safety.
"""

from __future__ import annotations

from backends.base import SamplingParams
from webui.hookspecs import SETTING_TYPES, Context, ExtensionTool, ReplyInfo, Setting, hookimpl

__all__ = ["SETTING_TYPES", "Context", "ExtensionTool", "ReplyInfo", "SamplingParams", "Setting", "hookimpl"]
