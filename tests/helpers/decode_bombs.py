"""Decompression bombs for the decode limits: small FLAC files that hold 6 hours of audio.

Two kinds, because a limit has to hold against both:

- ``honest``: a FLAC whose header says 6 hours (and holds them). Built by FFmpeg from a
  0.05 Hz square tone at 8 kHz, which FLAC stores in about 330 KB.
- ``lying``: 20 s of the same tone, concatenated 1,080 times by stream copy. The header
  still says 20 s; the file decodes to 6 hours (345.6 MB of 8 kHz PCM). Only a decode that
  counts what comes out can catch it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.ffmpeg import ffmpeg_binary

BOMB_SECONDS = 6 * 3600
RATE = 8000
_TONE = "aevalsrc=0.25*gte(mod(t\\,20)\\,10):s={rate}:d={seconds}:n=8000"


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-v", "error", "-nostdin", "-y", *args],
                   check=True, timeout=600)


def honest_bomb(dest: Path, rate: int = RATE) -> Path:
    """6 hours of tone in a FLAC that says so (about 330 KB at 8 kHz)."""
    _ffmpeg("-f", "lavfi", "-i", _TONE.format(rate=rate, seconds=BOMB_SECONDS),
            "-ac", "1", "-sample_fmt", "s16", "-c:a", "flac", str(dest))
    return dest


def lying_bomb(dest: Path, rate: int = RATE) -> Path:
    """6 hours of tone in a FLAC whose header says 20 s (about 570 KB at 8 kHz)."""
    piece = dest.with_name(dest.stem + ".piece.flac")
    # Frames that divide 20 s exactly, so the copies join without a short frame between.
    _ffmpeg("-f", "lavfi", "-i", _TONE.format(rate=rate, seconds=20), "-ac", "1",
            "-sample_fmt", "s16", "-c:a", "flac", "-frame_size", str(rate // 2), str(piece))
    listing = dest.with_name(dest.stem + ".list.txt")
    listing.write_text(f"file '{piece.name}'\n" * (BOMB_SECONDS // 20))
    _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(dest))
    listing.unlink()
    piece.unlink()
    return dest
