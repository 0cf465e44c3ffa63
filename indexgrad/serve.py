"""`indexgrad serve`: the playground's page and its JSON API (SPEC 12), a Starlette app run by Uvicorn."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import EMPTY, REQUESTS
from .errors import IndexgradError
from .pool import Busy, Pool, TimeLimit, WorkerDied

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# the examples in the order a course meets them; the others follow by name
FIRST = ("affine", "logistic", "tanh_net", "sqrt_norm", "mlp", "softmax_xent", "losses", "correlation")
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # KaTeX sets inline styles; scripts come only from the package's own files
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
}


def examples() -> list[dict[str, str]]:
    """The .idx examples shipped with the package (or beside it in a source checkout): name, the
    first comment line as a title, and the source; read once, when the app is made."""
    local = Path(__file__).resolve().parent.parent / "examples"
    folder: Any = local if local.is_dir() else resources.files("indexgrad.examples")
    found = {f.name[:-4]: f.read_text(encoding="utf-8") for f in folder.iterdir() if f.name.endswith(".idx")}
    names = [n for n in FIRST if n in found] + sorted(n for n in found if n not in FIRST)
    out = []
    for n in names:
        first = (found[n].splitlines() or [""])[0]
        title = first.lstrip("# ").strip() if first.startswith("#") else ""
        out.append({"name": n, "title": title, "source": found[n]})
    return out


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413: by its Content-Length before reading it,
    and by counting what arrives (a chunked body has no length), then hand the app the body read."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is over {self.limit // 1024} KiB; send a shorter program"
        response = JSONResponse({"error": message}, 413, headers={"Connection": "close"})
        await response(scope, receive, send)


class SecurityHeaders:
    """Add HEADERS to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                extra = [(k, v) for k, v in extra if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with)


def _failure(kind: str, status: int, message: str) -> JSONResponse:
    """A request the workers could not answer, shaped like an answer with one diagnostic."""
    place = {"line": None, "column": None, "end_line": None, "end_column": None, "severity": "error"}
    body = EMPTY[kind] | {"error": message, "diagnostics": [place | {"message": message}]}
    return JSONResponse(body, status)


def create_app(
    workers: int = 2,
    timeout: float = 10.0,
    memory: int = 256 << 20,
    host: str = "127.0.0.1",
) -> Starlette:
    """The playground app: `workers` processes answer the API, each request under `timeout` seconds
    and `memory` bytes per array (see pool.Pool)."""
    pool = Pool(workers, timeout, memory)
    listing = examples()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def list_examples(request: Request) -> Response:
        return JSONResponse({"examples": listing})

    def endpoint(kind: str) -> Any:
        async def answer(request: Request) -> Response:
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                return JSONResponse({"error": "the request body must be a JSON object"}, 400)
            try:
                status, reply = await pool.run(kind, body)
            except TimeLimit:
                message = f"this took longer than the playground's {timeout:g} s; use smaller dims"
                return _failure(kind, 504, message)
            except Busy:
                return _failure(kind, 503, "the playground is busy; try again in a moment")
            except WorkerDied:
                message = "the worker stopped before it answered (out of memory?); use smaller dims"
                return _failure(kind, 503, message)
            return JSONResponse(reply, status)

        return answer

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.close()

    routes = [
        Route("/", index),
        Route("/api/examples", list_examples),
        *(Route(f"/api/{kind}", endpoint(kind), methods=["POST"]) for kind in REQUESTS),
        # StaticFiles serves only files under the package's static folder: '../' out of it is a 404
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders), Middleware(BodyLimit)]
    if host in LOOPBACK:  # a page elsewhere cannot reach this server by a name that resolves to loopback
        allowed = ["127.0.0.1", "localhost", "[::1]"]
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _config(app: Starlette, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        limit_concurrency=200,  # more open requests than this are answered 503 at once
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=MAX_BODY,  # request line and headers
    )


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 2, timeout: float = 10.0) -> None:
    """Run the playground until interrupted."""
    sock = listening_socket(host, port)
    port = sock.getsockname()[1]  # --port 0: the free port the system chose
    if host not in LOOPBACK:
        warning = f"indexgrad serve: listening on {host}: whoever reaches this machine can use it"
        print(warning, file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"indexgrad playground: http://{shown}:{port}/", file=sys.stderr)
    try:
        uvicorn.Server(_config(create_app(workers, timeout, host=host), host, port)).run(sockets=[sock])
    finally:
        sock.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (as Uvicorn binds one), or an IndexgradError saying why
    not: an address in use, or a host that is no address of this machine (Uvicorn logged these
    and exited with status 1 or 3)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        raise IndexgradError(
            f"cannot listen on {host} port {port}: {getattr(e, 'strerror', None) or e}; choose another "
            "--port (0 picks a free one), or a --host that is an address of this machine"
        ) from None
    return sock


@contextlib.contextmanager
def running(workers: int = 2, timeout: float = 10.0, memory: int = 256 << 20) -> Iterator[str]:
    """The playground on 127.0.0.1 at a free port, in a thread of this process, for tests and
    scripts: yields its base URL (`http://127.0.0.1:PORT`), and stops it on exit."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(create_app(workers, timeout, memory), "127.0.0.1", port, "warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the playground server did not start")
            threading.Event().wait(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
