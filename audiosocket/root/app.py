"""App wiring: the typed services and the shared context every session gets, and resolving
``--app`` to a class."""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from audiosocket.config import Config, ConfigError
from helpers.ai import AiSlots, ModelCache
from helpers.postcall.archive import FFmpegCap
from helpers.recorder import RecorderWriter
from sessions.base import Session

if TYPE_CHECKING:
    from audiosocket.call import Call
    from audiosocket.live import LiveHub
    from audiosocket.server import CallObserver
    from helpers.postcall.jobs import PostCallJobs
    from helpers.speech.stt import SttEngine
    from helpers.speech.tts import TtsEngine
    from helpers.store.db import CallStore

__all__ = [
    "BUILTIN_APPS", "NEEDS", "AppContext", "Need", "Services", "SessionFactory",
    "resolve_app", "session_factory",
]

#: What an app may declare in ``Session.needs``: the optional fields of :class:`Services`.
Need = Literal["store", "live", "stt", "tts", "jobs"]
#: Every :data:`Need`, in the order the root builds them (each may use those before it).
NEEDS: tuple[Need, ...] = ("store", "live", "stt", "tts", "jobs")

#: Built-in apps by name; any other ``module:Class`` path works too.
BUILTIN_APPS = {
    "echo": "sessions.echo:EchoSession",
    "record": "sessions.record:RecordSession",
    "transcribe": "sessions.transcribe:TranscribeSession",
    "ivr": "sessions.ivr:IvrSession",
}


@dataclass(frozen=True)
class Services:
    """The process-wide engines, built once by the composition root and handed down.

    An engine is None until something needs it (``services.provide`` builds what an app
    declares in ``Session.needs`` and puts a new ``Services`` in the context: the object
    itself never changes, so a session that holds it sees one consistent set).

    The last four fields are what used to be module-level singletons in ``helpers``: made
    once per process (:meth:`for_config`) and passed down to every engine. Their defaults
    are for tests that need a ``Services`` without a config.
    """

    #: The call store (``<data>/calls.db``); every served call is written to it.
    store: CallStore | None = None
    #: The live-call hub: the portal's live view and listen-in.
    live: LiveHub | None = None
    #: Live speech-to-text (Whisper), shared by every call.
    stt: SttEngine | None = None
    #: Text-to-speech (Piper) with its prompt cache.
    tts: TtsEngine | None = None
    #: The post-call job workers (archives, peaks, transcript, summary).
    jobs: PostCallJobs | None = None
    #: The cap on concurrent AI inference shared by Whisper and the summariser.
    ai: AiSlots = field(default_factory=AiSlots)
    #: The cap on concurrent FFmpeg (and echo-canceller) children.
    ffmpeg: FFmpegCap = field(default_factory=FFmpegCap)
    #: The one thread that writes every call's recording.
    writer: RecorderWriter = field(default_factory=RecorderWriter)
    #: Models loaded once: Whisper checkpoints, Piper voices, the Silero VAD.
    models: ModelCache = field(default_factory=ModelCache)

    @classmethod
    def for_config(cls, config: Config) -> Services:
        """The process-wide parts sized from ``config`` (``postcall.ai_limit``,
        ``postcall.ffmpeg_limit``); no engine built yet."""
        return cls(ai=AiSlots(config.postcall.ai_limit),
                   ffmpeg=FFmpegCap(config.postcall.ffmpeg_limit))


class AppContext:
    """What sessions share: settings, the data directory and the process-wide engines.

    Engines (``services``) are created once at start-up by the composition root, from what
    the app declares in ``Session.needs`` (``services.provide``), so a session never loads a
    model and never imports the wiring. Without ``services`` the context starts with
    :meth:`Services.for_config`: no engine yet, the process-wide caps from ``config``.
    """

    def __init__(self, config: Config, services: Services | None = None) -> None:
        self.config = config
        self.services = services if services is not None else Services.for_config(config)
        #: Call observers (``call_started(call)`` / ``call_ended(call)``) the server notifies.
        self.observers: list[CallObserver] = []
        #: One lock per engine, so concurrent first uses load it once (``services.ensure_*``).
        self.loading: dict[Need, asyncio.Lock] = {}

    @property
    def data_dir(self) -> Path:
        return self.config.data_path

    @property
    def shared_dir(self) -> Path:
        """Where recordings, archives and voicemail go: ``cluster.shared_dir`` (a directory
        every node mounts), else ``data_dir``. Never ``calls.db``: it stays in ``data_dir``."""
        return self.config.shared_path


def resolve_app(name: str) -> type[Session]:
    """``echo`` / ``record`` / ``transcribe`` / ``ivr`` or ``package.module:Class``."""
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


@dataclass(frozen=True)
class SessionFactory:
    """Makes a call's session, and tells the server which hooks the app overrides.

    Computed here, in the composition root, so the server never imports the session base
    class. It matters for speed: a call whose app does not listen to ticks can go to the
    clock's C media path, and inbound frames are routed only to an app that hears audio.
    """

    cls: type[Session]
    ctx: AppContext
    #: The app overrides ``on_tick``: the server calls it after every outbound frame.
    hears_ticks: bool
    #: The app overrides ``on_audio``: inbound audio frames are routed to it.
    hears_audio: bool

    def __call__(self, call: Call) -> Session:
        return self.cls(call, self.ctx)


def session_factory(cls: type[Session], ctx: AppContext) -> SessionFactory:
    """Bind the context so the server can create a session from a call alone."""
    return SessionFactory(
        cls, ctx,
        hears_ticks=cls.on_tick is not Session.on_tick,
        hears_audio=cls.on_audio is not Session.on_audio,
    )
