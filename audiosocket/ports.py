"""Is a TCP port free to listen on? Checked before ``serve`` loads anything, so a port in use
is a one-line error at once instead of a traceback after the (slow) prompt warm-up."""

from __future__ import annotations

import errno
import socket

__all__ = ["port_in_use"]


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (e.g. "Address already in use"), or None.

    Binds with SO_REUSEADDR as the real listeners do, so a socket in TIME_WAIT left by the
    previous run does not count as busy. Only "in use" and "not allowed" count: anything
    else (no IPv6 here, a name that does not resolve) is left to the real listener to report.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError:
        return None
    for family, kind, proto, _name, addr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return exc.strerror or str(exc)
    return None
