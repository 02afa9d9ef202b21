"""The HTTP server's thread: uvicorn's event loop beside the daemon's main loop.

:meth:`HttpServer.start` binds every ``[http] listen`` address itself (so a busy
port is a start-up error that names the key, and port 0 gets a free port that is
logged), clears uploads a crash interrupted, and runs uvicorn in one daemon thread;
it returns once uvicorn serves. :meth:`HttpServer.stop` lets running requests end
briefly and joins the thread. Requests reach the ledger only through the daemon's
handler (:mod:`watchd.http.bridge`), as the control socket's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog
import uvicorn

from watchd.config import HttpConfig, WatchConfig
from watchd.errors import ConfigError
from watchd.http.app import Door, create_app
from watchd.http.bridge import Bridge, Handler
from watchd.http.tokens import Tokens
from watchd.http.uploads import clear_staging

log = structlog.get_logger()

#: How long start() waits for uvicorn to serve, and stop() for running requests.
START_TIMEOUT: Final = 30.0
STOP_GRACE: Final = 5.0
#: Idle keep-alive connections are closed after this (seconds).
KEEP_ALIVE: Final = 30


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; a failure names the key and the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"http.listen: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return sock


class HttpServer:
    """One uvicorn server in one thread, serving the API on every configured address."""

    def __init__(
        self,
        config: HttpConfig,
        handler: Handler,
        spool: Path,
        watches: Callable[[], tuple[WatchConfig, ...]],
    ) -> None:
        self.config = config
        self.bridge = Bridge(handler)
        self._spool = spool
        self._watches = watches
        self._sockets: list[socket.socket] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.urls: list[str] = []

    def start(self) -> None:
        config = self.config
        tokens = Tokens.load(config.tokens_file) if config.tokens_file else None
        clear_staging(self._spool)
        door = Door(self.bridge, config, self._spool, self._watches, tokens)
        uv_config = uvicorn.Config(
            create_app(door),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_keep_alive=KEEP_ALIVE,
            timeout_graceful_shutdown=int(STOP_GRACE),
            ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
            ssl_keyfile=str(config.tls_key) if config.tls_key else None,
            server_header=False,
        )
        try:
            uv_config.load()
        except (OSError, ValueError) as exc:  # ssl: unreadable or mismatched cert/key
            raise ConfigError(f"http.tls_cert: cannot use the certificate: {exc}") from None
        self._sockets = [bind(host, port) for host, port in config.listen]
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._run, name="watchd-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError("http.listen: the HTTP server did not start (see the log)")
            time.sleep(0.01)
        self.urls = [_url(config.scheme, s) for s in self._sockets]
        log.info(
            "http.listening",
            urls=self.urls,
            tokens=len(tokens) if tokens else 0,
            tls=config.tls_cert is not None,
        )

    def _run(self) -> None:
        assert self._server is not None
        try:
            asyncio.run(self._serve())
        except BaseException:
            log.exception("http.server_failed")

    async def _serve(self) -> None:
        assert self._server is not None
        self.bridge.bind(asyncio.get_running_loop())
        await self._server.serve(sockets=self._sockets)

    def job_ended(self, job_id: int) -> None:
        self.bridge.job_ended(job_id)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(START_TIMEOUT)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets = []


def _url(scheme: str, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
