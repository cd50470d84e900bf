"""Time-to-live for state: the user-facing ``Ttl`` option and the ``TtlStateBackend`` wrapper.

The wrapper's clock is the event-time watermark by default, or processing time. Every stored
value carries ``expires_at`` (see ``values.py``); an entry with ``expires_at <= clock`` reads as
absent. Writes of values with a finite stamp also write an expiry-index entry, in a column
family of its own, so a sweep finds expired entries without scanning live data::

    expiry index key (column family "__expiry__", or "__expiry_proc__" for processing time)
    +-----------------------+----------------------+--------------------+
    | expires_at (8 B, BE)  | state name (tuple    | stored key of the  |
    |                       |  codec, str element) | entry in its state |
    +-----------------------+----------------------+--------------------+
    value: empty

The state name is self-delimiting as long as the stored key after it does not start with FF;
the store's keys start with a key group below 0x8000, and raw writes must keep to that too.

A sweep takes index entries up to the clock in bounded steps. For each it point-reads the entry
it names and deletes it if still expired (a rewrite may have moved its expiry on), then deletes
the index entry. Deletions are ordinary batch writes, so write listeners (the Kafka changelog)
see them too.

The invariant the sweep relies on is weaker than "an index entry per write": every stored entry
with a finite stamp has an index entry at a time <= its stamp. States registered with
:meth:`TtlStateBackend.set_lazy_index` (ValueState and ReducingState) use that: a write whose
stamp is not earlier than the key's previous, unexpired stamp writes none (the invariant says
an entry at or before that one exists), and when the sweep reaches an entry whose value was
rewritten with a later stamp it moves the entry to that stamp (one PUT, the very key an eager
writer would have written). A key written many times per TTL period then costs one index entry
per period instead of one per write, and its writer keeps no record of index entries: the
stamp it caches anyway tells it when one is needed (:meth:`TtlStateBackend.index_horizon`).

Each index keeps a floor: every index key below it has been swept. A sweep starts there, so
on RocksDB it does not walk the tombstones of earlier sweeps; a write of an index entry below
the floor lowers it (:meth:`TtlStateBackend.lower_sweep_floor`), and writes the wrapper does
not see (a changelog restore) must be followed by :meth:`TtlStateBackend.reset_sweep_floor`.
"""

from __future__ import annotations

import struct
import time as _time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter, methodcaller
from typing import Literal

from eddies.errors import ConfigError
from eddies.state.backend import PUT, Batch, Op, StateBackend, singles
from eddies.state.keys import decode_element, encode_key
from eddies.state.values import NEVER, read_stamp

__all__ = ["MIN_TIME", "Ttl", "TtlConfig", "TtlStateBackend", "EXPIRY_CF", "EXPIRY_PROC_CF",
           "refreshes"]

TimeDomain = Literal["event", "processing"]
MIN_TIME = -(2**63)
"""The watermark before any event: nothing is expired yet."""
EXPIRY_CF = "__expiry__"
EXPIRY_PROC_CF = "__expiry_proc__"
_be = struct.Struct(">Q")


def refreshes(old: int, new: int) -> bool:
    """Whether a read under ``update="on_read_and_write"`` moves a stamp ``old`` to ``new``:
    on, never back (a read at an earlier event time, an entry's own longer ``ttl=``); a
    stamp from before the TTL (never) takes it, as a write would.

    >>> refreshes(1_100, 1_050), refreshes(1_100, 1_200), refreshes(NEVER, 1_200)
    (False, True, True)
    """
    return new > old or old == NEVER
_read_le = struct.Struct("<Q").unpack_from
_cf_of = itemgetter(1)
_key_of = itemgetter(2)


@dataclass(frozen=True)
class Ttl:
    """How long a state entry lives after it is written, in event time unless told otherwise.

    The parts add up: ``Ttl(minutes=1, seconds=30)`` is 90 s.

    - ``time="event"``: a write at record (or timer) time t expires once the watermark
      reaches t + ttl; ``"processing"`` uses the processing-time clock instead.
    - ``update="on_read_and_write"``: reads that return an entry's value also restart its
      clock: ValueState/ReducingState ``get``, ListState ``get`` (every element), MapState
      ``get``, ``get_many`` and ``[]``. Scans (``entries``, ``keys``, ``values``),
      ``contains``, ``length`` and ``is_empty`` do not. A read never moves an expiry
      earlier (a read at an earlier event time, an entry put with its own longer ``ttl=``).
    - ``visibility="expired_if_present"``: an expired entry stays readable until it is
      physically deleted, by a sweep (the harness sweeps at every watermark) or a rewrite.
    - Switching a state's TTL off keeps the expiry of what was written under it (reads and
      sweeps agree); new writes never expire. Switching it on leaves old values unexpiring.

    >>> Ttl(minutes=1, seconds=30).duration_ms
    90000
    >>> Ttl(hours=1, time="processing", update="on_read_and_write").time
    'processing'
    """

    ms: int = 0
    seconds: float = 0
    minutes: float = 0
    hours: float = 0
    time: TimeDomain = "event"
    update: Literal["on_write", "on_read_and_write"] = "on_write"
    visibility: Literal["never_expired", "expired_if_present"] = "never_expired"

    def __post_init__(self) -> None:
        if self.duration_ms <= 0:
            raise ConfigError(f"{self!r}: a Ttl must be positive, e.g. Ttl(minutes=10)")
        if self.time not in ("event", "processing"):
            raise ConfigError(f"Ttl time must be 'event' or 'processing', not {self.time!r}")
        if self.update not in ("on_write", "on_read_and_write"):
            raise ConfigError(
                f"Ttl update must be 'on_write' or 'on_read_and_write', not {self.update!r}"
            )
        if self.visibility not in ("never_expired", "expired_if_present"):
            raise ConfigError(
                "Ttl visibility must be 'never_expired' or 'expired_if_present', "
                f"not {self.visibility!r}"
            )

    @property
    def duration_ms(self) -> int:
        """The total time to live in milliseconds."""
        return int(
            self.ms + self.seconds * 1000 + self.minutes * 60_000 + self.hours * 3_600_000
        )


@dataclass(frozen=True)
class TtlConfig:
    """Options of a :class:`TtlStateBackend`.

    ``ttl_ms`` is the default TTL for states that declare none (None: they never expire).
    ``time`` is the default clock, ``clock`` an injectable processing-time source in ms, and
    ``sweep_batch`` the most entries one sweep step deletes.

    ``sweep_lag_ms`` lets physical deletion wait that long past expiry (on the entry's own
    clock), as RocksDB compaction-filter cleanup does in Flink and segment drops do in Kafka
    Streams' window stores: reads never see an expired value either way, but a sweep that
    reaches an index entry later finds more of its keys rewritten (moved once, not once per
    TTL period) or overwritten after expiring (nothing to delete). Expired entries then hold
    storage up to that much longer. None (the default) lags each clock by the shortest TTL
    in use on it (MapState entry TTLs included; 0 until there is one): sweeps run after
    checkpoints, so an expired entry is gone one such TTL plus at most a checkpoint interval
    after it expired. A clock on which a state shows expired values
    (``visibility="expired_if_present"``, where deletion is what hides them) gets 0. 0 deletes
    at the first sweep past expiry.
    """

    ttl_ms: int | None = None
    time: TimeDomain = "event"
    clock: Callable[[], int] | None = None
    sweep_batch: int = 10_000
    sweep_lag_ms: int | None = None

    def __post_init__(self) -> None:
        if self.sweep_lag_ms is not None and self.sweep_lag_ms < 0:
            raise ConfigError(f"TtlConfig.sweep_lag_ms must be >= 0, got {self.sweep_lag_ms}")

    def default_ttl(self) -> Ttl | None:
        return None if self.ttl_ms is None else Ttl(ms=self.ttl_ms, time=self.time)


def _in_groups(index_keys: list[bytes], groups: frozenset[bytes]) -> tuple[list[bytes], bytes | None]:
    """The index keys whose stored key is in one of ``groups`` (2-byte key group prefixes),
    and the first of the others (None: none).

    >>> keys = [_be.pack(1) + encode_key(state) + group + b"k" for state, group in
    ...         [("a", b"\\x00\\x01"), ("bb", b"\\x00\\x02"), ("a", b"\\x00\\x02")]]
    >>> ours, first = _in_groups(keys, frozenset([b"\\x00\\x02"]))
    >>> ours == keys[1:], first == keys[0], _in_groups(keys[2:], frozenset([b"\\x00\\x02"]))[1]
    (True, True, None)
    """
    n = decode_element(index_keys[0], 8)[1]
    name_enc = index_keys[0][8:n]
    if all(map(methodcaller("startswith", name_enc, 8), index_keys)) and not any(
        map(methodcaller("startswith", name_enc + b"\xff", 8), index_keys)
    ):  # one state's entries (as _split_by_state): the key group at one offset
        ours = [k for k in index_keys if k[n:n + 2] in groups]
        first = None if len(ours) == len(index_keys) else next(
            k for k in index_keys if k[n:n + 2] not in groups)
        return ours, first
    ours = []
    first = None
    name_enc = b""
    for index_key in index_keys:
        n = 8 + len(name_enc)
        if not name_enc or not index_key.startswith(name_enc, 8) or index_key[n:n + 1] == b"\xff":
            n = decode_element(index_key, 8)[1]
            name_enc = index_key[8:n]
        if index_key[n:n + 2] in groups:
            ours.append(index_key)
        elif first is None:
            first = index_key
    return ours, first


def _wall_clock_ms() -> int:
    return _time.time_ns() // 1_000_000


class TtlStateBackend(StateBackend):
    """Wraps any backend with expiry: expired entries read as absent and are swept.

    >>> from eddies.state.memory import InMemoryStateBackend
    >>> from eddies.state.values import encode_value
    >>> db = TtlStateBackend(InMemoryStateBackend(), TtlConfig())
    >>> b = Batch(); b.put("s", b"k", encode_value("v", 11_000)); db.write(b)
    >>> db.set_watermark(10_999); db.get("s", b"k") is not None
    True
    >>> db.set_watermark(11_000); db.get("s", b"k") is None
    True
    >>> db.sweep(), db.inner.count("s")
    (1, 0)
    """

    takes_put_many = True  # passed on to the inner backend, which spells them out if it must

    def __init__(
        self, inner: StateBackend, config: TtlConfig | None = None, namespace: str = ""
    ) -> None:
        super().__init__()
        self.inner = inner
        # Operators sharing one backend each wrap it with their own clock and expiry index.
        suffix = f".{namespace}" if namespace else ""
        self.expiry_cf = EXPIRY_CF + suffix
        self.expiry_proc_cf = EXPIRY_PROC_CF + suffix
        self.config = config or TtlConfig()
        self.watermark = MIN_TIME
        fixed = self.config.sweep_lag_ms
        # Per clock: the sweep lag in force (see TtlConfig.sweep_lag_ms), and for the automatic
        # lag the shortest TTL registered on it and whether a state on it shows expired values.
        self._lags: dict[str, int] = {"event": fixed or 0, "processing": fixed or 0}
        self._shortest: dict[str, int] = {}
        self._shows_expired: set[str] = set()
        self.event_horizon = MIN_TIME
        """No sweep of the event-time index has reached a stamp above this: the highest
        watermark less the lag in force at it (see :meth:`index_horizon`)."""
        self._manual_processing_time: int | None = None
        self._clock = self.config.clock or _wall_clock_ms
        self._domains: dict[str, TimeDomain] = {}
        self._names: dict[str, bytes] = {}  # encoded state names, for index keys
        self.expired_deleted = 0
        """Entries physically deleted by sweeps so far."""
        self.sweeps = 0
        self._sweep_listeners: list[Callable[[str, list[bytes]], None]] = []
        self._processing_swept = -(2**63)  # the highest processing-time clock swept at
        self._lazy: set[str] = set()  # states whose index entries the sweep moves on
        self._firing: set[str] = set()  # states whose expiries their operator fires
        self._floor: dict[str, bytes] = {}  # per index: every key below it is swept

    # -- clocks ------------------------------------------------------------------------------
    def set_watermark(self, ms: int) -> None:
        """Move the event-time clock forward (it never goes back).

        The runtime also writes ``watermark`` directly, once per record, so that each record
        reads state as of its own watermark at the cost of one attribute store: that moves
        the clock alone, and the sweep and this method catch ``event_horizon`` up."""
        if ms > self.watermark:
            self.watermark = ms
        self._raise_event_horizon()

    def _raise_event_horizon(self) -> None:
        """Move ``event_horizon`` up to the watermark less the event lag, never down: a
        lag that grows leaves it where it is (sweeps at the old lag may have reached it)."""
        horizon = self.watermark - self._lags["event"]
        if horizon > self.event_horizon:
            self.event_horizon = horizon

    def set_processing_time(self, ms: int) -> None:
        """Pin the processing-time clock (tests and the harness); overrides ``config.clock``."""
        self._manual_processing_time = ms

    def processing_time(self) -> int:
        if self._manual_processing_time is not None:
            return self._manual_processing_time
        return self._clock()

    def register_ttl(self, cf: str, ttl: Ttl, shows_expired: bool | None = None) -> None:
        """Say that ``cf`` holds entries written under ``ttl``: which clock expires them, and
        what the automatic sweep lag takes into account (see ``TtlConfig.sweep_lag_ms``).
        ``shows_expired`` (default: ``ttl.visibility == "expired_if_present"``) says whether
        reads of ``cf`` show expired entries until they are deleted."""
        time = ttl.time
        self._domains[cf] = time
        if self.config.sweep_lag_ms is not None:
            return
        if shows_expired is None:
            shows_expired = ttl.visibility == "expired_if_present"
        if shows_expired:
            self._shows_expired.add(time)
        shortest = self._shortest.get(time)
        if shortest is None or ttl.duration_ms < shortest:
            self._shortest[time] = shortest = ttl.duration_ms
        self._lags[time] = 0 if time in self._shows_expired else shortest
        if time == "event":
            self._raise_event_horizon()  # a shorter lag: sweeps now reach further

    def register_clock(self, cf: str, time: TimeDomain) -> None:
        """Say that ``cf`` holds entries stamped with absolute times on clock ``time``
        (MapState ``expire_at``), so that they are indexed and swept; no TTL duration, so
        the automatic sweep lag is unchanged."""
        self._domains.setdefault(cf, time)

    def sweep_lag(self, time: TimeDomain) -> int:
        """The sweep lag in force on clock ``time``, in ms."""
        return self._lags[time]

    def expires(self, cf: str) -> bool:
        """True when entries of ``cf`` can expire (a TTL or a clock was registered for it):
        their writes are indexed for the sweep."""
        return cf in self._domains

    def time_domain(self, cf: str) -> TimeDomain:
        return self._domains.get(cf, self.config.time)

    def now(self, cf: str) -> int:
        """The clock that expires entries of ``cf``."""
        if self._domains.get(cf, self.config.time) == "event":
            return self.watermark
        return self.processing_time()

    # -- reads ---------------------------------------------------------------------------------
    def get_raw(self, cf: str, key: bytes) -> bytes | None:
        """The stored bytes even if expired (for ``expired_if_present`` and inspection)."""
        return self.inner.get(cf, key)

    def get(self, cf: str, key: bytes) -> bytes | None:
        data = self.inner.get(cf, key)
        if data is None or read_stamp(data) <= self.now(cf):
            return None
        return data

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        clock = self.now(cf)
        return [
            None if d is None or read_stamp(d) <= clock else d
            for d in self.inner.multi_get(cf, keys)
        ]

    def iterate(
        self,
        cf: str,
        lower: bytes | None = None,
        upper: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        clock = self.now(cf)
        for key, data in self.inner.iterate(cf, lower, upper, reverse):
            if read_stamp(data) > clock:
                yield key, data

    def iterate_raw(
        self,
        cf: str,
        lower: bytes | None = None,
        upper: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        return self.inner.iterate(cf, lower, upper, reverse)

    def column_families(self) -> list[str]:
        return self.inner.column_families()

    def count(self, cf: str) -> int:
        return self.inner.count(cf)

    def is_empty(self, cf: str) -> bool:
        """Whether ``cf`` holds no stored entry, expired ones included."""
        return self.inner.is_empty(cf)

    # -- writes --------------------------------------------------------------------------------
    def write(self, batch: Batch, sync: bool = False) -> None:
        # Listeners live on the inner backend, so the changelog sees index entries and sweeps.
        self._apply(batch, sync)

    def add_write_listener(self, listener: Callable[[Batch], None]) -> None:
        self.inner.add_write_listener(listener)

    def set_lazy_index(self, cf: str) -> None:
        """Let the sweep move the index entries of ``cf`` on (see the module docstring): its
        writer then indexes a key only when the key's previous stamp does not vouch for an
        entry (see :meth:`index_horizon`)."""
        self._lazy.add(cf)

    def set_fires_expiries(self, cf: str) -> None:
        """Say that ``cf``'s operator fires and deletes its expired values itself (a state
        declared with ``on_expire``): it gets no index entries, and a sweep never deletes its
        values, for a value deleted before it fired would never reach ``on_expire``. Index
        entries it has from before (a state given ``on_expire`` on an existing dir) just go."""
        self._firing.add(cf)

    def index_horizon(self, cf: str) -> int:
        """No sweep of ``cf``'s index has reached a stamp above this. A stored value whose
        stamp is above it still has an index entry at or before that stamp, so a writer
        that rewrites it with a stamp no earlier needs no new entry."""
        if self._domains.get(cf, self.config.time) == "event":
            # Sweeps run at the watermark less the lag, and the watermark never goes back.
            return self.event_horizon
        return max(self.processing_time(), self._processing_swept)

    def lower_sweep_floor(self, index_ops: list[Op]) -> None:
        """Index entries ``index_ops`` (puts, as :meth:`index_ops` makes them) are being
        written: sweeps must look as low as the lowest of them in each index."""
        floors = self._floor
        if not floors or not index_ops:
            return
        index_cfs = set(map(_cf_of, index_ops))
        lowest = ({index_cfs.pop(): min(map(_key_of, index_ops))} if len(index_cfs) == 1
                  else {cf: min(op[2] for op in index_ops if op[1] == cf) for cf in index_cfs})
        for index_cf, key in lowest.items():
            floor = floors.get(index_cf)
            if floor is not None and key < floor:
                floors[index_cf] = key

    def reset_sweep_floor(self) -> None:
        """Forget the floors: the next sweep scans each index from its start."""
        self._floor.clear()

    def add_sweep_listener(self, listener: Callable[[str, list[bytes]], None]) -> None:
        """Call ``listener(state, stored_keys)`` after a sweep deleted those entries.

        The state store uses it to drop the swept entries from its caches, so a cache never
        shows a value the backend no longer holds.
        """
        self._sweep_listeners.append(listener)

    @property  # type: ignore[override]
    def round_trips(self) -> int:
        return self.inner.round_trips

    @round_trips.setter
    def round_trips(self, value: int) -> None:
        pass

    def _apply(self, batch: Batch, sync: bool) -> None:
        index = self.index_ops(batch.ops, registered_only=False)
        self.lower_sweep_floor(index)
        self.inner.write(Batch(batch.ops + index) if index else batch, sync)

    def index_target(self, cf: str) -> tuple[str, bytes] | None:
        """``(index column family, encoded state name)`` under which finite-stamped writes to
        ``cf`` are indexed, or None if ``cf`` has no clock registered with this wrapper (as
        :meth:`index_ops` with ``registered_only``). An index key is ``expires_at (8 B BE) +
        encoded name + stored key``."""
        domain = self._domains.get(cf)
        if domain is None or cf.startswith("__") or cf in self._firing:
            return None
        name = self._names.get(cf)
        if name is None:
            name = self._names[cf] = encode_key(cf)
        return (self.expiry_cf if domain == "event" else self.expiry_proc_cf), name

    def index_ops(self, ops: list[Op], registered_only: bool = True) -> list[Op]:
        """Expiry-index entries for the finite-stamped puts in ``ops``.

        With ``registered_only`` just states given a clock by :meth:`register_ttl` (those of
        this wrapper's operator when several share a backend); else every non-internal state.
        """
        index: list[Op] = []
        domains = self._domains
        default = self.config.time
        firing = self._firing
        for kind, cf, key, value in singles(ops):
            if kind != PUT or value is None or cf.startswith("__"):
                continue
            if (registered_only and cf not in domains) or cf in firing:
                continue
            expires_at = read_stamp(value)
            if expires_at != NEVER:
                domain = domains.get(cf, default)
                index_cf = self.expiry_cf if domain == "event" else self.expiry_proc_cf
                index.append((PUT, index_cf, _be.pack(expires_at) + encode_key(cf) + key, b""))
        return index

    # -- sweeping ------------------------------------------------------------------------------
    def _clocks(self) -> tuple[tuple[str, int], tuple[str, int]]:
        self._raise_event_horizon()  # the watermark may have been set directly
        now = self.processing_time()
        if now > self._processing_swept:
            self._processing_swept = now  # a wall clock may step back: see index_horizon
        lags = self._lags
        return ((self.expiry_cf, self.watermark - lags["event"]),
                (self.expiry_proc_cf, now - lags["processing"]))

    def sweep(self, limit: int | None = None) -> int:
        """Delete up to ``limit`` expired entries (default ``config.sweep_batch``).

        One bounded step: it takes at most ``limit`` index entries. Returns how many stored
        entries were deleted; index entries of values that were rewritten with a later expiry
        are dropped without touching the value.
        """
        return self._sweep_step(limit or self.config.sweep_batch, {})[0]

    def _sweep_step(self, limit: int, cursors: dict[str, bytes],
                    groups: frozenset[bytes] | None = None) -> tuple[int, int]:
        """Returns (entries deleted, index entries taken). ``cursors`` carries, per index,
        where the previous step of the same sweep stopped: its index entries are deleted, and
        on RocksDB seeking from the start again would walk their tombstones every step.
        ``groups``: only entries of these key groups (2-byte prefixes) go; the others keep
        their index entries, and the floor stays at the first of them."""
        deleted = taken = 0
        floors = self._floor
        for index_cf, clock in self._clocks():
            if clock < 0 or taken >= limit:
                continue
            upper = _be.pack(min(clock, NEVER - 1) + 1)
            start = cursors.get(index_cf) or floors.get(index_cf)
            if start is not None and start >= upper:
                continue
            want = limit - taken
            candidates = self.inner.keys(index_cf, start, upper, want)
            if candidates:
                cursors[index_cf] = candidates[-1] + b"\x00"  # the next key up
                taken += len(candidates)
                ours, kept = (candidates, None) if groups is None else _in_groups(
                    candidates, groups)
                if kept is not None:  # the floor stays at the first entry left
                    cursors.setdefault("\x00" + index_cf, kept)
                if ours:
                    deleted += self._delete_expired(index_cf, ours, clock)
            if len(candidates) < want:
                # Nothing is left below upper now that these are swept. Entries this step
                # moved on lie at or above upper (their stamps are past the clock).
                floors[index_cf] = min(upper, cursors.get("\x00" + index_cf, upper))
        if deleted:
            self.sweeps += 1
        return deleted, taken

    def _delete_expired(self, index_cf: str, index_keys: list[bytes], clock: int) -> int:
        by_state = self._split_by_state(index_keys)
        batch = Batch()
        deleted: dict[str, list[bytes]] = {}
        lazy = self._lazy
        for state, keys in by_state.items():
            if state in self._firing:
                continue  # its operator fires them: the entries alone go (see below)
            values = self.inner.multi_get(state, keys)
            if state in lazy:
                gone = []
                moved: dict[bytes, int] = {}
                for key, data in zip(keys, values, strict=True):
                    if data is not None:  # else gone already: the entry just goes
                        expires_at = _read_le(data)[0]
                        if expires_at <= clock:
                            gone.append(key)
                        elif expires_at != NEVER:
                            moved[key] = expires_at
                if moved:
                    name = self._names.get(state) or encode_key(state)
                    batch.put_many(index_cf, list(map(bytes.__add__, map(
                        bytes.__add__, map(_be.pack, moved.values()), repeat(name)), moved)),
                        [b""] * len(moved))
            else:
                gone = [
                    key
                    for key, data in zip(keys, values, strict=True)
                    if data is not None and _read_le(data)[0] <= clock
                ]
            if gone:
                gone = list(dict.fromkeys(gone))  # a key indexed twice is deleted once
                batch.delete_many(state, gone)
                deleted[state] = gone
        batch.delete_many(index_cf, index_keys)
        self.inner.write(batch)
        n = sum(len(keys) for keys in deleted.values())
        self.expired_deleted += n
        for listener in self._sweep_listeners:
            for state, keys in deleted.items():
                listener(state, keys)
        return n

    @staticmethod
    def _split_by_state(index_keys: list[bytes]) -> dict[str, list[bytes]]:
        """The stored keys the index entries name, per state."""
        # Mostly one state's entries (an operator's own index): checked and cut in C loops.
        state, n = decode_element(index_keys[0], 8)
        name_enc = index_keys[0][8:n]
        if all(map(methodcaller("startswith", name_enc, 8), index_keys)) and not any(
            map(methodcaller("startswith", name_enc + b"\xff", 8), index_keys)
        ):
            return {state: list(map(itemgetter(slice(n, None)), index_keys))}
        by_state: dict[str, list[bytes]] = {}
        name_enc = b""  # the encoded state name of the previous index key, usually the same
        state = ""
        for index_key in index_keys:
            n = 8 + len(name_enc)
            # A stored key never starts with FF (key groups are < 0x8000), so an FF after the
            # name's terminator is an escaped NUL: a longer name, to be decoded in full.
            if (
                not name_enc
                or not index_key.startswith(name_enc, 8)
                or index_key[n : n + 1] == b"\xff"
            ):
                state, n = decode_element(index_key, 8)
                name_enc = index_key[8:n]
            by_state.setdefault(state, []).append(index_key[n:])
        return by_state

    def sweep_all(self, groups: Iterable[int] | None = None) -> int:
        """Sweep in bounded steps until nothing expired is left; returns entries deleted.

        Memory is bounded by one step (``config.sweep_batch`` entries), not by how many
        entries expire. ``groups``: sweep only the entries of these key groups (a Kafka
        worker's owned ones; copies of other key groups expire by their owner's clock).
        """
        total = 0
        cursors: dict[str, bytes] = {}
        limit = self.config.sweep_batch
        prefixes = None if groups is None else frozenset(g.to_bytes(2, "big") for g in groups)
        while True:
            deleted, taken = self._sweep_step(limit, cursors, prefixes)
            total += deleted
            if not taken:
                return total

    def close(self) -> None:
        self.inner.close()
