"""The live inspector: ``/metrics``, ``/healthz`` and range queries over a running job's state,
over HTTP.

An :class:`InspectorServer` serves on a daemon thread (stdlib ``ThreadingHTTPServer``)::

    GET /metrics          Prometheus text (Metrics.render)
    GET /healthz          200 {"status": "ok", ...} once the job is processing, else 503
                          {"status": "starting"|"rebalancing"|"restoring"|..., "reason": ...}
    GET /state            {"states": [names], "checkpoint": n}
    GET /state/{state}?key=&prefix=&start=&start_after=&end=&reverse=&limit=&cursor=
                          {"entries": [{"key": [...], "map_key": [...]|null, "value": ...,
                                        "expires_at": ms|null}], "cursor": "..."|null,
                           "checkpoint": n}

``checkpoint`` says which checkpoint the answer reflects: the number of checkpoints the job
has written (0 before the first; counted across resumes of a state dir). It is there when
the runner gives ``checkpoints=``; ``states=`` names the job's declared states, so they are
listed, and answer an empty page, before their first checkpoint.

Query parameters follow ``eddies state ls``: keys and bounds are JSON when the text parses as
JSON (``key=["user",7]``), else a bare string (``key=alice``); see ``inspection.py`` for what
the range options mean with and without ``key``. ``/healthz`` asks the runner's ``health()``
(see :data:`Health`) on the HTTP thread, so it answers at once even while the job is busy in a
restore; without one, it answers 200 whenever the server serves. Errors are ``{"error": reason}``: 400 for a
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
``Authorization: Bearer <token>`` (the scheme in any case). A token may be given on loopback
too. The token is checked first, before the query is parsed or anything else is done.

Limits, so that no client can stall or kill the job: at most ``max_connections`` connections
are served at once (by default a sixteenth of the process's descriptor limit, between 4 and
64); one beyond the cap gets a 503 at once and is closed, so the job's own files never run
out of descriptors. A client has ``request_timeout`` seconds from connecting to send its
request (slow or idle clients are dropped), and every read or write on a connection times
out after as long. The listen backlog is 256, so bursts of scrapes wait in the kernel, not
in SYN retries. A query parameter may hold at most 4,096 characters and a key or bound at
most 16 levels of nesting (400 beyond that). Nothing a client sends writes a traceback to
the job's logs: protocol and client errors are logged at DEBUG.

What the runner does::

    metrics = Metrics(job.name)
    server = InspectorServer(metrics, backend, port=9100).listen()  # host=, token=, owner=
    ...open state, restore...                # a port in use failed above, before this
    server.start()                           # serve (listen() first is optional)
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

import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
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

__all__ = [
    "MAX_KEY_DEPTH",
    "MAX_PARAM_CHARS",
    "Health",
    "InspectorServer",
    "Owner",
    "QueryQueue",
    "QueryUnavailable",
    "check_exposure",
]

T = TypeVar("T")
Owner = Callable[[tuple[Any, ...]], "str | None"]
"""``owner(key)``: another worker's "host:port" if it owns ``key``'s partition, else None."""
Health = Callable[[], "tuple[bool, dict[str, Any]]"]
"""``health() -> (ready, body)``: whether the job is processing (``/healthz`` answers 200, else
503) and the JSON body that says why, with at least ``"status"``. Called on HTTP threads: it
must only read what the runner publishes (no I/O, no state reads) and return at once."""

log = logging.getLogger("eddies.inspector")

_RANGE_PARAMS = ("key", "prefix", "start", "start_after", "end")
_PARAMS = frozenset((*_RANGE_PARAMS, "reverse", "limit", "cursor"))
_TRUE = frozenset(("", "1", "true", "yes"))
_FALSE = frozenset(("0", "false", "no"))

MAX_PARAM_CHARS = 4_096
"""The longest query parameter value the inspector takes (after URL decoding)."""
MAX_KEY_DEPTH = 16
"""The deepest nesting of JSON arrays and objects a key or bound may have."""
BACKLOG = 256
"""The listen backlog: connections the kernel queues while the server accepts others."""
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NESTING = re.compile(r"[\[\]{}]")


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


_PYTHON_FIX = ("pass token=... (clients then send 'Authorization: Bearer <token>') or bind "
               "127.0.0.1")


def check_exposure(host: str, token: str | None, *, fix: str = _PYTHON_FIX) -> None:
    """Raise ConfigError if serving on ``host`` would expose state beyond this machine without
    a token. ``fix`` says what to do; it names the Python arguments unless a caller (the CLI)
    names its own options.

    >>> check_exposure("127.0.0.1", None); check_exposure("0.0.0.0", "s3cret")
    >>> check_exposure("0.0.0.0", None)
    Traceback (most recent call last):
    ...
    eddies.errors.ConfigError: the inspector would serve state on '0.0.0.0', beyond this machine, without a token; pass token=... (clients then send 'Authorization: Bearer <token>') or bind 127.0.0.1
    """
    if not token and not _is_loopback(host):
        raise ConfigError(
            f"the inspector would serve state on {host!r}, beyond this machine, without a "
            f"token; {fix}"
        )


def _default_max_connections() -> int:
    """A sixteenth of the descriptor limit, in 4..64: inspector sockets stay a small share
    of the descriptors the job's own files (RocksDB tables, sinks) need."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover (no resource module)
        return 64
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 64
    return max(4, min(64, soft // 16))


def _nesting_depth(text: str) -> int:
    """How deep JSON arrays and objects nest in ``text`` (brackets inside strings aside)."""
    if "[" not in text and "{" not in text:
        return 0
    depth = deepest = 0
    for match in _NESTING.finditer(_JSON_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


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
    caller's to close (several servers may share it). ``port=0`` picks a free port (see
    :attr:`address`). ``max_limit`` caps a page, so one query cannot stall the job for long.
    ``max_connections`` (default: from the descriptor limit, 4..64) and ``request_timeout``
    (seconds to send a request, and for each read or write) bound what clients can hold.
    ``states()`` gives the job's declared state names and ``checkpoints()`` how many
    checkpoints it has written; both are called on the runner thread. ``health()`` answers
    ``/healthz`` (see :data:`Health`), on the HTTP thread.
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
        max_connections: int | None = None,
        request_timeout: float = 5.0,
        states: Callable[[], Iterable[str]] | None = None,
        checkpoints: Callable[[], int] | None = None,
        health: Health | None = None,
    ) -> None:
        check_exposure(host, token)
        if not 0 < max_limit <= MAX_LIMIT:
            raise ConfigError(f"max_limit must be in 1..{MAX_LIMIT}, got {max_limit}")
        if max_connections is None:
            max_connections = _default_max_connections()
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {max_connections}")
        if not request_timeout > 0:
            raise ConfigError(f"request_timeout must be positive, got {request_timeout}")
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
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.states = states
        self.checkpoints = checkpoints
        self.health = health
        self._httpd: _Server4 | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def listen(self) -> InspectorServer:
        """Bind and listen, without serving yet; returns self. Raises ConfigError when the
        address cannot be had, so a runner can fail before it creates anything."""
        if self._httpd is not None:
            return self
        server_cls = _Server6 if ":" in self.host else _Server4
        try:
            httpd = server_cls((self.host, self.port), self.max_connections,
                               self.request_timeout)
        except (OSError, OverflowError) as exc:
            raise ConfigError(
                f"the inspector cannot listen on {self.host}:{self.port}: {exc}; pick another "
                "port (0 picks a free one) or address"
            ) from exc
        httpd.inspector = self
        self._httpd = httpd
        return self

    def start(self) -> InspectorServer:
        """Listen (unless :meth:`listen` did) and serve on a daemon thread; returns self."""
        self.listen()
        if self._thread is None:
            assert self._httpd is not None
            self._thread = threading.Thread(target=self._serve, args=(self._httpd,),
                                            name="eddies-inspector", daemon=True)
            self._thread.start()
            log.info("inspector listening on %s", self.url)
        return self

    @staticmethod
    def _serve(httpd: _Server4) -> None:
        try:
            httpd.serve_forever(poll_interval=0.05)
        except Exception as exc:  # the job goes on without its inspector
            log.error("the inspector stopped serving: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        """Stop serving; close the queue if the server made it (waiting queries get 503)."""
        if self._owns_queue:
            self.queue.close()
        httpd, self._httpd = self._httpd, None
        thread, self._thread = self._thread, None
        if httpd is not None:
            if thread is not None:
                httpd.shutdown()  # only once serve_forever runs: else it waits forever
            httpd.drop_all()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

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

    @property
    def refused(self) -> int:
        """Connections refused so far because ``max_connections`` were being served."""
        return 0 if self._httpd is None else self._httpd.refused

    # -- requests (on HTTP threads) ------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (scheme in any case)."""
        if self.token is None:
            return True
        if not header:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    def handle(self, path: str, query: str) -> tuple[int, Any]:
        """(status, body) for a GET: body is bytes (metrics) or a JSON-able object."""
        parts = [unquote(p) for p in path.split("/") if p]
        if not parts:
            return 200, {"endpoints": ["/metrics", "/healthz", "/state", "/state/{state}"]}
        if parts == ["metrics"]:
            if self.metrics is None:
                return 404, {"error": "metrics are not enabled on this inspector"}
            return 200, self.metrics.render()
        if parts == ["healthz"]:
            return self._health()
        if parts[0] != "state" or len(parts) > 2:
            return 404, {"error": f"no endpoint {_clip(path)!r}; try /metrics, /healthz, "
                                  "/state, /state/NAME"}
        backend = self.backend
        if backend is None:
            return 404, {"error": "state inspection is not enabled on this inspector"}
        try:
            if len(parts) == 1:
                return 200, self.queue.submit(lambda: self._list(backend), self.query_timeout)
            if len(parts[1]) > MAX_PARAM_CHARS:
                raise _BadQuery(f"no state named {_clip(parts[1])!r}")
            return 200, self._query(backend, parts[1], query)
        except _BadQuery as exc:
            return 400, {"error": str(exc)}
        except _Misdirected as exc:
            return 421, {"error": str(exc), "owner": exc.owner}
        except QueryUnavailable as exc:
            return 503, {"error": str(exc)}
        except (ConfigError, StateError) as exc:  # bad key, unknown state, bad cursor or limit
            return 400, {"error": str(exc)}
        except RecursionError:
            return 400, {"error": "a key or bound nests too deeply"}
        except Exception as exc:  # a bug; the job goes on (drain keeps it off the runner)
            log.error("inspector query %s failed: %s: %s", _clip(path), type(exc).__name__,
                      _clip(str(exc)))
            log.debug("inspector query %s?%s failed", path, query, exc_info=True)
            return 500, {"error": f"internal error: {type(exc).__name__}: {_clip(str(exc))}"}

    def _health(self) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``GET /healthz`` (HTTP thread)."""
        if self.health is None:
            return 200, {"status": "ok"}
        try:
            ready, body = self.health()
        except Exception as exc:  # a bug in the probe: say so, never pass for healthy
            log.error("inspector health check failed: %s: %s", type(exc).__name__, exc)
            return 503, {"status": "error",
                         "reason": f"the health check failed: {type(exc).__name__}: "
                                   f"{_clip(str(exc))}"}
        return (200 if ready else 503), body

    def _list(self, backend: StateBackend) -> dict[str, Any]:
        """The body of ``GET /state`` (runner thread)."""
        names = set(list_states(backend))
        if self.states is not None:
            names.update(n for n in self.states() if not n.startswith("__"))
        body: dict[str, Any] = {"states": sorted(names)}
        if self.checkpoints is not None:
            body["checkpoint"] = self.checkpoints()
        return body

    def _query(self, backend: StateBackend, state: str, query: str) -> dict[str, Any]:
        options = self._options(query)
        key = options.get("key")
        owner = self.owner
        declared = self.states

        def run() -> dict[str, Any]:
            if owner is not None and "key" in options:  # key=null is the key (None,)
                where = owner(as_tuple(key))
                if where is not None:
                    raise _Misdirected(
                        f"key {key!r} is in a partition this worker does not own"
                        + (f"; ask {where}" if where else " (owner unknown: try another worker)"),
                        where or None,
                    )
            body: dict[str, Any]
            stored = list_states(backend)
            if declared is not None and state not in stored:
                known = sorted({*stored, *declared()} - {""})
                if state not in known:
                    raise StateError(f"no state named {state!r}; states here: "
                                     f"{', '.join(known) or 'none'}")
                body = {"entries": [], "cursor": None}  # declared, nothing checkpointed yet
            else:
                page = query_state(backend, state, **options)
                body = {"entries": [to_json_entry(e) for e in page.entries],
                        "cursor": page.cursor}
            if self.checkpoints is not None:
                body["checkpoint"] = self.checkpoints()
            return body

        return self.queue.submit(run, self.query_timeout)

    def _options(self, query: str) -> dict[str, Any]:
        try:
            params = parse_qs(query, keep_blank_values=True, max_num_fields=2 * len(_PARAMS))
        except ValueError:
            raise _BadQuery(f"too many query parameters; use "
                            f"{', '.join(sorted(_PARAMS))}, each once") from None
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise _BadQuery(f"unknown query parameter(s) {_clip(', '.join(unknown))}; use "
                            f"{', '.join(sorted(_PARAMS))}")
        options: dict[str, Any] = {}
        for name, values in params.items():
            if len(values) > 1:
                raise _BadQuery(f"query parameter {name!r} given {len(values)} times")
            text = values[0]
            if len(text) > MAX_PARAM_CHARS:
                raise _BadQuery(f"query parameter {name!r} is {len(text):,} characters long; "
                                f"the most is {MAX_PARAM_CHARS:,}")
            if name in _RANGE_PARAMS:
                depth = _nesting_depth(text)
                if depth > MAX_KEY_DEPTH:
                    raise _BadQuery(f"{name}= nests {depth:,} levels deep; a key or bound "
                                    f"nests at most {MAX_KEY_DEPTH}")
                options[name] = parse_key_text(text)
            elif name == "reverse":
                if text.lower() not in _TRUE | _FALSE:
                    raise _BadQuery(f"reverse={_clip(text)!r}: use true or false")
                options["reverse"] = text.lower() in _TRUE
            elif name == "limit":
                try:
                    limit = int(text)
                except ValueError:
                    raise _BadQuery(f"limit={_clip(text)!r} is not an integer") from None
                if not 0 < limit <= self.max_limit:
                    raise _BadQuery(f"limit={limit}: use 1..{self.max_limit} and the cursor "
                                    "for more")
                options["limit"] = limit
            else:
                options["cursor"] = text
        return options


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[:width] + "..."


_BUSY_BODY = json.dumps({"error": "the inspector is serving as many connections as it may; "
                                  "try again"}).encode()
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
         % len(_BUSY_BODY)) + _BUSY_BODY


def _refuse_busy(sock: socket.socket) -> None:
    """Answer 503 without a thread or a wait, and close."""
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            # Read what the client already sent: closing with unread input resets the
            # connection, and the client might not get to read the 503.
            sock.recv(65_536)
        sock.send(_BUSY)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()


class _Server4(ThreadingHTTPServer):
    """A ThreadingHTTPServer with a cap on connections and a deadline on each."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = BACKLOG
    inspector: InspectorServer

    def __init__(self, address: tuple[str, int], max_connections: int,
                 request_timeout: float) -> None:
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.refused = 0
        # Each connection being served, with the monotonic time it is dropped at.
        self._active: dict[socket.socket, float] = {}
        self._active_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors: the listener stays readable, so back off rather than
                # spin; pending clients wait in the backlog.
                log.debug("inspector cannot accept: %s", exc)
                time.sleep(0.05)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            full = len(self._active) >= self.max_connections
            if not full:
                self._active[request] = time.monotonic() + self.request_timeout
        if full:
            self.refused += 1
            _refuse_busy(request)
            return
        super().process_request(request, client_address)

    def extend(self, request: socket.socket, seconds: float) -> None:
        """Give a connection ``seconds`` more from now (once its request is read)."""
        with self._active_lock:
            if request in self._active:
                self._active[request] = time.monotonic() + seconds

    def shutdown_request(self, request: Any) -> None:
        with self._active_lock:
            self._active.pop(request, None)
        super().shutdown_request(request)

    def service_actions(self) -> None:
        """Drop connections past their deadline (called by serve_forever every poll)."""
        if not self._active:
            return
        now = time.monotonic()
        with self._active_lock:  # held, so no handler closes a socket being shut down
            for sock, deadline in self._active.items():
                if deadline <= now:
                    _drop(sock)
                    self._active[sock] = float("inf")  # dropped once; its thread closes it

    def drop_all(self) -> None:
        with self._active_lock:
            for sock in self._active:
                _drop(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away or timed out: one line at DEBUG, no traceback anywhere.
        exc = sys.exc_info()[1]
        log.debug("inspector connection from %s ended: %s: %s", client_address,
                  type(exc).__name__, exc)


def _drop(sock: socket.socket) -> None:
    """End a connection from another thread: its handler's read or write returns at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Server6(_Server4):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server4
    server_version = "eddies-inspector"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # every read and write

    def _authorized(self) -> bool:
        """Check the token, first of all; answers 401 itself when it is wrong."""
        if self.server.inspector.authorized(self.headers.get("Authorization")):
            return True
        self._send(401, {"error": "missing or wrong token: send the header "
                                  "'Authorization: Bearer <token>'"},
                   {"WWW-Authenticate": 'Bearer realm="eddies"'})
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorized():
            return
        inspector = self.server.inspector
        # The request is in: the query's own timeout applies now, then one for the reply.
        self.server.extend(self.connection,
                           inspector.query_timeout + self.server.request_timeout)
        url = urlsplit(self.path)
        status, body = inspector.handle(url.path, url.query)
        headers = {"Retry-After": "1"} if status == 503 else {}
        self._send(status, body, headers)

    def _refuse(self) -> None:
        if not self._authorized():
            return
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
