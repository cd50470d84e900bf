"""The live inspector: ``/metrics`` and range queries over a running job's state, over HTTP.

An :class:`InspectorServer` serves on a daemon thread (stdlib ``ThreadingHTTPServer``)::

    GET /metrics          Prometheus text (Metrics.render)
    GET /state            {"states": [names]}
    GET /state/{state}?key=&prefix=&start=&start_after=&end=&reverse=&limit=&cursor=
                          {"entries": [{"key": [...], "map_key": [...]|null, "value": ...,
                                        "expires_at": ms|null}], "cursor": "..."|null}

Query parameters follow ``eddies state ls``: keys and bounds are JSON when the text parses as
JSON (``key=["user",7]``), else a bare string (``key=alice``); see ``inspection.py`` for what
the range options mean with and without ``key``. Errors are ``{"error": reason}``: 400 for a
bad query (unknown state or parameter, malformed key, cursor or limit), 401 for a missing or
wrong token, 421 with ``"owner": "host:port"`` (or null when unknown) for a key whose
partition another worker owns, 503 when the job did not take the query in time or has
stopped. A bad query never affects the job.

Threads: state is read on the runner's thread, never the HTTP thread, so a query never sees a
half-applied write. The server submits each query to a :class:`QueryQueue`; the runner calls
``queue.drain()`` at batch boundaries, which runs the queries waiting (a no-op costing one
attribute read when none are). A query waits ``query_timeout`` seconds for a drain, then
gets 503. Queries read stored state, so they see the job as of its last checkpoint.

Security: the server binds 127.0.0.1 unless told otherwise; binding any other address needs
a token (the constructor raises ConfigError without one), and every request must then send
``Authorization: Bearer <token>``. A token may be given on loopback too.

What the runner does::

    metrics = Metrics(job.name)
    server = InspectorServer(metrics, backend, port=9100).start()   # host=, token=, owner=
    while running:
        ...process a micro-batch, update metrics...
        server.queue.drain()                 # answer queries between batches
    server.stop()                            # before closing the backend; waiting queries 503

``owner(key) -> str | None`` (Kafka workers): called on the runner thread (through the
queue) with the key tuple of a ``key=`` query; return None to answer from local state, the
``"host:port"`` of the worker that owns the key's partition to send the client there (421),
or ``""`` when this worker does not own it and does not know who does (421, owner null).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from eddies.errors import ConfigError, EddiesError, StateError
from eddies.runtime.inspection import (
    MAX_LIMIT,
    list_states,
    parse_key_text,
    query_state,
    to_json_entry,
)
from eddies.runtime.metrics import Metrics
from eddies.state.backend import StateBackend
from eddies.state.keys import as_tuple

__all__ = ["InspectorServer", "Owner", "QueryQueue", "QueryUnavailable"]

T = TypeVar("T")
Owner = Callable[[tuple[Any, ...]], "str | None"]
"""``owner(key)``: another worker's "host:port" if it owns ``key``'s partition, else None."""

log = logging.getLogger("eddies.inspector")

_RANGE_PARAMS = ("key", "prefix", "start", "start_after", "end")
_PARAMS = frozenset((*_RANGE_PARAMS, "reverse", "limit", "cursor"))
_TRUE = frozenset(("", "1", "true", "yes"))
_FALSE = frozenset(("0", "false", "no"))


class QueryUnavailable(EddiesError):
    """The runner did not take a query in time, or has stopped (HTTP 503)."""


class _Item:
    __slots__ = ("fn", "done", "result", "error", "running", "cancelled")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.running = False
        self.cancelled = False


class QueryQueue:
    """Hands callables from HTTP threads to the runner thread, which runs them in ``drain()``.

    ``inline=True`` runs each callable at once on the submitting thread: only for a backend
    nothing writes to meanwhile (a read-only snapshot, a finished job, tests).

    >>> q = QueryQueue()
    >>> t = threading.Thread(target=lambda: print(q.submit(lambda: 6 * 7)))
    >>> t.start()
    >>> while t.is_alive():
    ...     _ = q.drain()
    42
    """

    def __init__(self, *, inline: bool = False) -> None:
        self.inline = inline
        self._items: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._closed: str | None = None

    @property
    def pending(self) -> int:
        """Queries waiting for a drain."""
        return len(self._items)

    def submit(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run ``fn`` on the runner thread at its next drain; return its result or raise its
        exception. Raises :class:`QueryUnavailable` after ``timeout`` seconds without a drain,
        or if the queue is closed."""
        if self.inline:
            return fn()
        item = _Item(fn)
        with self._lock:
            if self._closed is not None:
                raise QueryUnavailable(self._closed)
            self._items.append(item)
        if not item.done.wait(timeout):
            with self._lock:
                if not item.running:
                    item.cancelled = True  # drain skips it: nobody waits for the answer
                    raise QueryUnavailable(
                        f"the job did not take the query within {timeout:g}s (busy in a long "
                        "batch or checkpoint?); try again"
                    )
            item.done.wait()  # already running: it finishes soon
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[no-any-return]

    def drain(self) -> int:
        """Run the queries waiting now, on this (the runner's) thread; returns how many ran.

        A query's exception goes back to its submitter, never out of ``drain``.
        """
        if not self._items:  # the common case, once per batch: no lock taken
            return 0
        ran = 0
        for _ in range(len(self._items)):  # not the ones arriving meanwhile: no starvation
            with self._lock:
                if not self._items:
                    break
                item = self._items.popleft()
                if item.cancelled:
                    continue
                item.running = True
            try:
                item.result = item.fn()
            except Exception as exc:
                item.error = exc
            except BaseException:  # the runner is being interrupted: release the waiter
                item.error = QueryUnavailable("the job stopped while answering the query")
                raise
            finally:
                item.done.set()
            ran += 1
        return ran

    def close(self, reason: str = "the job has stopped; its state is no longer served") -> None:
        """Refuse new queries and fail the waiting ones with :class:`QueryUnavailable`."""
        with self._lock:
            self._closed = reason
            items = list(self._items)
            self._items.clear()
        for item in items:
            item.error = QueryUnavailable(reason)
            item.done.set()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _BadQuery(Exception):
    pass


class _Misdirected(Exception):
    def __init__(self, message: str, owner: str | None) -> None:
        super().__init__(message)
        self.owner = owner


class InspectorServer:
    """Serves ``/metrics`` and ``/state`` queries of a running job (see the module docstring).

    ``metrics`` and ``backend`` are each optional (their endpoints answer 404 without them).
    ``queue`` defaults to a new :class:`QueryQueue`, available as ``server.queue``; the runner
    must drain it. :meth:`stop` closes a queue the server made; one passed in is the
    caller's to close (several servers may share it). ``port=0`` picks a free port (see :attr:`address`). ``max_limit`` caps a
    page, so one query cannot stall the job for long.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        backend: StateBackend | None = None,
        queue: QueryQueue | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        owner: Owner | None = None,
        query_timeout: float = 5.0,
        max_limit: int = 1_000,
    ) -> None:
        if not token and not _is_loopback(host):
            raise ConfigError(
                f"the inspector would serve state on {host!r}, beyond this machine, without a "
                "token; pass token=... (clients send 'Authorization: Bearer <token>') or bind "
                "127.0.0.1"
            )
        if not 0 < max_limit <= MAX_LIMIT:
            raise ConfigError(f"max_limit must be in 1..{MAX_LIMIT}, got {max_limit}")
        self.metrics = metrics
        self.backend = backend
        self._owns_queue = queue is None
        self.queue = queue if queue is not None else QueryQueue()
        self.host = host
        self.port = port
        self.token = token or None
        self.owner = owner
        self.query_timeout = query_timeout
        self.max_limit = max_limit
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> InspectorServer:
        """Bind and serve on a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        server_cls = _Server6 if ":" in self.host else _Server4
        try:
            httpd = server_cls((self.host, self.port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"the inspector cannot listen on {self.host}:{self.port}: {exc}; pick another "
                "port (0 picks a free one)"
            ) from exc
        httpd.inspector = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="eddies-inspector", daemon=True)
        self._thread.start()
        log.info("inspector listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving; close the queue if the server made it (waiting queries get 503)."""
        if self._owns_queue:
            self.queue.close()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> InspectorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) being served (the real port when started with port=0)."""
        if self._httpd is None:
            return self.host, self.port
        return self.host, self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- requests (on HTTP threads) ------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.token.encode())

    def handle(self, path: str, query: str) -> tuple[int, Any]:
        """(status, body) for a GET: body is bytes (metrics) or a JSON-able object."""
        parts = [unquote(p) for p in path.split("/") if p]
        if not parts:
            return 200, {"endpoints": ["/metrics", "/state", "/state/{state}"]}
        if parts == ["metrics"]:
            if self.metrics is None:
                return 404, {"error": "metrics are not enabled on this inspector"}
            return 200, self.metrics.render()
        if parts[0] != "state" or len(parts) > 2:
            return 404, {"error": f"no endpoint {path!r}; try /metrics, /state, /state/NAME"}
        backend = self.backend
        if backend is None:
            return 404, {"error": "state inspection is not enabled on this inspector"}
        try:
            if len(parts) == 1:
                states = self.queue.submit(lambda: list_states(backend), self.query_timeout)
                return 200, {"states": states}
            return 200, self._query(backend, parts[1], query)
        except _BadQuery as exc:
            return 400, {"error": str(exc)}
        except _Misdirected as exc:
            return 421, {"error": str(exc), "owner": exc.owner}
        except QueryUnavailable as exc:
            return 503, {"error": str(exc)}
        except (ConfigError, StateError) as exc:  # bad key, unknown state, bad cursor or limit
            return 400, {"error": str(exc)}
        except Exception as exc:  # a bug; the job goes on (drain keeps it off the runner)
            log.exception("inspector query %s?%s failed", path, query)
            return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}

    def _query(self, backend: StateBackend, state: str, query: str) -> dict[str, Any]:
        options = self._options(query)
        key = options.get("key")
        owner = self.owner

        def run() -> dict[str, Any]:
            if owner is not None and key is not None:
                where = owner(as_tuple(key))
                if where is not None:
                    raise _Misdirected(
                        f"key {key!r} is in a partition this worker does not own"
                        + (f"; ask {where}" if where else " (owner unknown: try another worker)"),
                        where or None,
                    )
            page = query_state(backend, state, **options)
            return {"entries": [to_json_entry(e) for e in page.entries], "cursor": page.cursor}

        return self.queue.submit(run, self.query_timeout)

    def _options(self, query: str) -> dict[str, Any]:
        params = parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise _BadQuery(f"unknown query parameter(s) {', '.join(unknown)}; use "
                            f"{', '.join(sorted(_PARAMS))}")
        options: dict[str, Any] = {}
        for name, values in params.items():
            if len(values) > 1:
                raise _BadQuery(f"query parameter {name!r} given {len(values)} times")
            text = values[0]
            if name in _RANGE_PARAMS:
                options[name] = parse_key_text(text)
            elif name == "reverse":
                if text.lower() not in _TRUE | _FALSE:
                    raise _BadQuery(f"reverse={text!r}: use true or false")
                options["reverse"] = text.lower() in _TRUE
            elif name == "limit":
                try:
                    limit = int(text)
                except ValueError:
                    raise _BadQuery(f"limit={text!r} is not an integer") from None
                if not 0 < limit <= self.max_limit:
                    raise _BadQuery(f"limit={limit}: use 1..{self.max_limit} and the cursor "
                                    "for more")
                options["limit"] = limit
            else:
                options["cursor"] = text
        return options


class _Server4(ThreadingHTTPServer):
    daemon_threads = True
    inspector: InspectorServer


class _Server6(_Server4):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server4
    server_version = "eddies-inspector"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        inspector = self.server.inspector
        if not inspector.authorized(self.headers.get("Authorization")):
            self._send(401, {"error": "missing or wrong token: send the header "
                                      "'Authorization: Bearer <token>'"},
                       {"WWW-Authenticate": 'Bearer realm="eddies"'})
            return
        url = urlsplit(self.path)
        status, body = inspector.handle(url.path, url.query)
        headers = {"Retry-After": "1"} if status == 503 else {}
        self._send(status, body, headers)

    def _refuse(self) -> None:
        self._send(405, {"error": f"{self.command} is not supported; the inspector is read-only "
                                  "(GET)"}, {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, bytes):
            data, ctype = body, Metrics.content_type
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)
