"""Sub-commands beyond ``serve`` and ``call`` (models, import, export), registered here so the
CLI module stays small. Each later feature adds its parser in this one place."""

from __future__ import annotations

from typing import Any

__all__ = ["add_extra_commands"]


def add_extra_commands(sub: Any) -> None:
    """Register the extra sub-commands on the ``audiosocket`` parser."""
