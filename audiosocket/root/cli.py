"""The audiosocket command: "serve" runs the server, "call" is a software Asterisk, and the
other commands manage recordings and models."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid as _uuid
from pathlib import Path
from typing import Any

import structlog

from audiosocket.config import Config, ConfigError, load_config
from audiosocket.logs import configure_logging, flush_logs

__all__ = ["main"]

log = structlog.get_logger("audiosocket")

#: The rates AudioSocket has a frame kind for (0x10-0x18).
CALL_RATES = (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000)
#: What a DTMF frame may carry.
DTMF_KEYS = frozenset("0123456789*#ABCD")


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the AudioSocket server (and the HTTP side)")
    p.add_argument("--host", help="AudioSocket bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="AudioSocket port (default 9092)")
    p.add_argument("--http-host", help="HTTP bind address (default: --host)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8080; 0 disables HTTP)")
    p.add_argument("--data-dir", help="recordings, database, caches (default ./var)")
    p.add_argument("--app", help="echo, record, transcribe, ivr (default) or module:Class")
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--log-format", choices=["json", "console"], help="log line format")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="lowest level logged")
    p.add_argument("--max-calls", type=int, help="refuse calls beyond this many")
    p.add_argument("--lead-ms", type=int, help="audio queued ahead of the clock (0-120 ms)")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    p.add_argument("--no-native-media", action="store_true",
                   help="carry every call's media in Python (no audiosocket._wire)")


def _call_parser(sub: Any) -> None:
    p = sub.add_parser("call", help="place a call like Asterisk would (a software caller)")
    p.add_argument("wav", nargs="?", help="WAV to stream (any rate or channel count)")
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="server port (default 9092)")
    p.add_argument("--rate", type=int, default=8000,
                   help="call rate: " + ", ".join(map(str, CALL_RATES)) + " (default 8000)")
    p.add_argument("--dtmf", default="", help="digits to send, e.g. 2 or 1234#")
    p.add_argument("--dtmf-delay", type=float, default=1.0, help="seconds before the first digit")
    p.add_argument("--dtmf-gap", type=float, default=0.3, help="seconds between digits")
    p.add_argument("--linger", type=float, default=10.0,
                   help="seconds to stay after the last thing sent, unless the server hangs up")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="hang up after this many seconds (default 120)")
    p.add_argument("--uuid", help="call UUID (default: random)")
    p.add_argument("--out", help="write what the server sent to this WAV")
    p.add_argument("--ulaw", action="store_true",
                   help="send 160-byte mu-law frames in kind 0x10 (Dial without c(slin))")
    p.add_argument("--silence", action="store_true",
                   help="keep sending silence after the WAV (transmit_silence=yes)")
    p.add_argument("--answer-timeout", type=float, default=2.0,
                   help="give up and exit 1 when the server sends nothing for this many "
                        "seconds, as Asterisk does (default 2)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="audiosocket", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _call_parser(sub)
    from audiosocket.root.commands import add_extra_commands

    add_extra_commands(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Merge flags over the TOML file and the environment."""
    overrides = {
        "host": args.host, "port": args.port, "http_host": args.http_host,
        "http_port": args.http_port, "data_dir": args.data_dir, "app": args.app,
        "log_format": args.log_format, "log_level": args.log_level,
        "max_calls": args.max_calls, "lead_ms": args.lead_ms,
        "uvloop": False if args.no_uvloop else None,
        "native_media": False if args.no_native_media else None,
    }
    return load_config(args.config, overrides)


def _install_uvloop(enabled: bool) -> str:
    if not enabled:
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def cmd_serve(args: argparse.Namespace) -> int:
    """``audiosocket serve``.

    Before anything else (no thread may exist yet): block SIGTERM/SIGINT, taken later by a
    thread of their own, and size the native thread pools before numpy loads
    (``audiosocket/lifecycle.py`` says why).
    """
    from audiosocket.lifecycle import block_termination_signals, limit_native_threads

    block_termination_signals()
    threads = limit_native_threads()
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"audiosocket: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level, buffered=True)
    loop_name = _install_uvloop(config.uvloop)
    from audiosocket.root.runner import run_server

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(
            run_server(config, loop_name=loop_name, native_threads=threads)
        )
    except ConfigError as exc:
        log.error("cannot_start", error=str(exc))
        return 2
    except ConnectionError as exc:  # an engine (NATS...) unreachable for connect_timeout_s
        log.error("cannot_start", error=str(exc))
        return 1
    # Everything durable is written and closed by now. Leave without the interpreter's own
    # teardown: it would join worker threads that may be inside a long native call (a
    # post-call transcript), and the job they run resumes at the next start anyway.
    log.info("exit", code=code)
    flush_logs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _call_arg_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the ``call`` options, checked before connecting (or None)."""
    if args.rate not in CALL_RATES:
        return f"--rate {args.rate}: not an AudioSocket rate (one of " + \
            ", ".join(map(str, CALL_RATES)) + ")"
    if args.uuid:
        try:
            _uuid.UUID(args.uuid)
        except ValueError:
            return f"--uuid {args.uuid!r}: not a UUID"
    bad = sorted(set(args.dtmf) - DTMF_KEYS)
    if bad:
        return f"--dtmf {args.dtmf!r}: {''.join(bad)!r} not allowed (only 0-9 * # A-D)"
    return None


def cmd_call(args: argparse.Namespace) -> int:
    """``audiosocket call``."""
    from audiosocket.caller import place_call
    from helpers.audio import read_audio, write_wav

    error = _call_arg_error(args)
    if error:
        print(f"audiosocket call: {error}", file=sys.stderr)
        return 2
    pcm = b""
    if args.wav:
        try:
            pcm = read_audio(args.wav, args.rate)
        except Exception as exc:
            print(f"audiosocket call: cannot read {args.wav}: {exc}", file=sys.stderr)
            return 2
    call_uuid = _uuid.UUID(args.uuid) if args.uuid else _uuid.uuid4()
    print(call_uuid, flush=True)
    try:
        result = asyncio.run(place_call(
            args.host, args.port, pcm=pcm, rate=args.rate, dtmf=args.dtmf,
            dtmf_delay=args.dtmf_delay, dtmf_gap=args.dtmf_gap, linger=args.linger,
            max_seconds=args.max_seconds, call_uuid=call_uuid, ulaw=args.ulaw,
            send_silence=args.silence, idle_timeout=args.answer_timeout or None,
        ))
    except OSError as exc:
        print(f"audiosocket call: cannot connect to {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    if args.out:
        write_wav(Path(args.out), bytes(result.received), args.rate)
    gaps = sorted(result.gaps_ms())
    p99 = gaps[int(len(gaps) * 0.99)] if gaps else 0.0
    ended = ("server hung up" if result.hangup_by_server
             else "server closed" if result.closed_by_server else "we hung up")
    print(
        f"sent {result.frames_sent} frames, received {result.frames_received} "
        f"({len(result.received) / (2 * args.rate):.2f} s), p99 gap {p99:.1f} ms, {ended}",
        file=sys.stderr,
    )
    if result.protocol_error:
        print(f"protocol error from server: {result.protocol_error}", file=sys.stderr)
        return 1
    if result.server_silent or (result.frames_received == 0 and not result.hangup_by_server):
        print(f"audiosocket call: the server sent nothing for {result.longest_silence_s:.1f} s "
              "(hung or not an AudioSocket server)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "call":
        return cmd_call(args)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
