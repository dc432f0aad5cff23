"""What a client of the HTTP API sees of the store: its rows through ``web.shapes``.

Tests of the store, the apps and the post-call jobs state their expectations in the API's
JSON (ISO dates, file URLs, ``<mark>`` snippets); the store itself returns typed rows.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from helpers.store.db import CallStore
from web.shapes import call_json, call_list_json, snippet_html


def api_call(store: CallStore, uuid: str) -> dict[str, Any] | None:
    """``GET /api/calls/{uuid}``'s body, or None (blocking)."""
    detail = store.get_call(uuid)
    return None if detail is None else call_json(detail)


async def aapi_call(store: CallStore, uuid: str) -> dict[str, Any] | None:
    """:func:`api_call` from the event loop (the read runs in the store's pool)."""
    detail = await store.aread(store.get_call, uuid)
    return None if detail is None else call_json(detail)


def api_calls(store: CallStore, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``GET /api/calls``'s items and total for ``store.list_calls(*args, **kwargs)``."""
    return call_list_json(store.list_calls(*args, **kwargs))


def api_search(store: CallStore, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Search hits as dicts, the snippet as the portal's HTML."""
    page = store.search(*args, **kwargs)
    return {"items": [{**asdict(h), "snippet": snippet_html(h.snippet)} for h in page.items],
            "total": page.total}


async def await_transcript(
    store: CallStore, uuid: str, lines: int, timeout: float = 20.0, every: float = 0.2
) -> dict[str, Any] | None:
    """The call as the API shows it once it has ended with at least ``lines`` transcript
    lines, or as it is when ``timeout`` runs out (None if it never appeared)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    call: dict[str, Any] | None = None
    while loop.time() < deadline:
        await store.aflush()
        call = await aapi_call(store, uuid)
        if call and call["ended_at"] and len(call["transcript"]) >= lines:
            break
        await asyncio.sleep(every)
    return call
