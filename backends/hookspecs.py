"""The hooks a loader plugin implements (pluggy).

A third-party package exposes a module under the entry point group
``inglenook.backends`` with::

    from backends.hookspecs import hookimpl

    @hookimpl
    def register_loaders(register):
        register(MyLoader())
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "inglenook.backends"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_loaders(register: Callable[..., None]) -> None:
    """Call ``register(loader)`` once for each :class:`backends.base.Loader` you provide."""
