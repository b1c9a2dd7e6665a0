"""Run the app under uvicorn on a socket bound here, so ``port=0`` gives a port that can be printed."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable

from ensrm._optional import require
from ensrm.serve.settings import ServeSettings, is_loopback


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; connections made before uvicorn accepts wait in its backlog.

    The socket is made with ``IPPROTO_TCP`` spelled out: asyncio turns Nagle's algorithm off
    only on sockets whose ``proto`` says TCP, and with it on, a response written in two parts
    waits for the client's delayed ACK (40 ms a request on Linux).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _reload_on_sighup(service) -> Callable:
    """A SIGHUP handler that reloads the bundle from its path (see ``_Service.reload``) on the event loop."""
    log = logging.getLogger("ensrm.serve")
    running: set = set()

    async def reload() -> None:
        try:
            await service.reload()
        except Exception as exc:  # noqa: BLE001 - the old bundle serves on; the failure is logged, not raised
            log.error("SIGHUP reload failed; the previous bundle keeps serving: %s", exc)

    def start() -> None:
        task = asyncio.ensure_future(reload())
        running.add(task)
        task.add_done_callback(running.discard)

    def handler(*_):
        if service.loop is None:
            log.warning("SIGHUP before the server started: ignored")
            return
        log.info("SIGHUP: reloading the bundle at %s", service.model.bundle)
        service.loop.call_soon_threadsafe(start)

    return handler


def run_server(scorer, settings: ServeSettings, response_filter=None, host: str = "127.0.0.1", port: int = 8000,
               echo: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM or SIGINT, then finish every queued and running request and return.

    Prints ``listening on http://HOST:PORT`` once the socket is bound (the real port when
    ``port`` is 0); ``/readyz`` turns 200 when the warm-up batch is scored. SIGHUP reloads
    the bundle from its path without dropping a request (``POST /v1/admin/reload`` does the
    same and can name another bundle).

    >>> run_server(ensrm.Scorer("bundles/default"), ServeSettings(), port=0)   # doctest: +SKIP
    listening on http://127.0.0.1:40123
    """
    uvicorn = require("uvicorn", "serve")
    from ensrm.serve.app import create_app

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(host) and settings.api_key is None:
        logging.getLogger("ensrm.serve").warning(
            "listening on %s, which is not loopback, without an API key: anyone who can reach this port can "
            "use the model; pass --api-key-file", host)
    app = create_app(scorer, settings, response_filter)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    echo(f"listening on http://{shown}:{sock.getsockname()[1]}")
    # timeout_graceful_shutdown=None: on SIGTERM uvicorn closes the listener, then waits for
    # every running request (and so the batcher's queue) before the app's shutdown.
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it shut down on once it is done; with these handlers in
    # place that is a no-op and the process exits 0 instead of dying of SIGTERM.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _reload_on_sighup(app.state.service))
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise RuntimeError("the server did not start; see the log above")
