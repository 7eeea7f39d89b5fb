"""Serving the game with uvicorn: in the foreground (``neuromem game serve``) or in a thread of
this process on a free local port (the demo, simulations, tests)."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from neuromem.errors import InputError

#: New sessions one client address may start in any 60 s by default: a lab running many
#: participants behind one address stays under it; a script creating sessions in a loop does
#: not. Behind a reverse proxy on the same host, uvicorn takes the address from
#: ``X-Forwarded-For``.
SESSIONS_PER_MINUTE = 60


def admin_token(path: str | Path) -> str:
    """The admin token kept in ``path`` (created with a random token, mode 0600, if missing)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32) + "\n")
    token = path.read_text().strip()
    if len(token) < 16:
        raise InputError(f"admin token file {path} holds fewer than 16 characters")
    return token


def serve(app, host: str, port: int) -> None:
    """Serve ``app`` until interrupted (access log off: URLs carry session tokens)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` on a free port of ``host`` in a thread; yields its base URL."""
    import uvicorn

    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; with
    # proto 0 each response (headers and body written apart) waits ~40 ms for a delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning",
                                           limit_concurrency=1000, backlog=1024))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the game server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
