"""`GET /metrics` over HTTP/1.0 for a Prometheus scraper, on the address `--metrics` gives.

Just enough HTTP for a scraper: one request per connection, a request of at most 8 KiB read
within 5 s, `GET /metrics` answered with the registry's page, anything else with 404 (405 for
another method). It serves no data of the filesystem, and needs no secret: bind it to an
address only the scraper reaches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def answer(request: bytes, render: Callable[[], str]) -> bytes:
    """The whole response to one request's head."""
    line = request.split(b"\r\n", 1)[0].split()
    if len(line) < 2:
        return _response(400, "Bad Request", "bad request\n")
    method, path = line[0], line[1].split(b"?", 1)[0]
    if method != b"GET":
        return _response(405, "Method Not Allowed", "only GET\n")
    if path != b"/metrics":
        return _response(404, "Not Found", "see /metrics\n")
    return _response(200, "OK", render())


def _response(status: int, reason: str, body: str) -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.0 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


async def serve_metrics(
    host: str,
    port: int,
    render: Callable[[], str],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port. Raises OSError if it cannot bind."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)

    async def handle(stream: trio.SocketStream) -> None:
        request = b""
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                    data = await stream.receive_some(MAX_REQUEST)
                    if not data:
                        break
                    request += data
                await stream.send_all(answer(request, render))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
