"""App wiring: the shared context every session gets, and resolving ``--app`` to a class."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiosocket.config import Config, ConfigError

if TYPE_CHECKING:
    from audiosocket.call import Call
    from sessions.base import Session

__all__ = ["BUILTIN_APPS", "AppContext", "resolve_app"]

#: Built-in apps by name; any other ``module:Class`` path works too.
BUILTIN_APPS = {
    "echo": "sessions.echo:EchoSession",
    "record": "sessions.record:RecordSession",
    "transcribe": "sessions.transcribe:TranscribeSession",
    "ivr": "sessions.ivr:IvrSession",
}


@dataclass
class AppContext:
    """What sessions share: settings, the data directory and the process-wide engines.

    Engines (``services``) are created once at start-up by whoever needs them, so a session
    never loads a model.
    """

    config: Config
    services: dict[str, Any] = field(default_factory=dict)
    #: Call observers (``call_started(call)`` / ``call_ended(call)``) the server notifies.
    observers: list[Any] = field(default_factory=list)
    #: One lock per engine name, so concurrent first uses load it once (``services.ensure_*``).
    loading: dict[str, asyncio.Lock] = field(default_factory=dict, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.config.data_path

    def get(self, name: str) -> Any:
        """A shared engine by name (``store``, ``stt``, ``tts``, ``jobs``, ``live``), or None."""
        return self.services.get(name)


def resolve_app(name: str) -> type[Session]:
    """``echo`` / ``record`` / ``transcribe`` / ``ivr`` or ``package.module:Class``."""
    from sessions.base import Session

    target = BUILTIN_APPS.get(name, name)
    if ":" not in target:
        raise ConfigError(
            f"app: unknown app {name!r}; use one of {', '.join(BUILTIN_APPS)} or module:Class"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"app: cannot load {target}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Session)):
        raise ConfigError(f"app: {target} is not a Session subclass")
    return cls


def session_factory(cls: type[Session], ctx: AppContext) -> Callable[[Call], Session]:
    """Bind the context so the server can create a session from a call alone."""

    def make(call: Call) -> Session:
        return cls(call, ctx)

    return make
