"""State declarations: what a function's class attributes say about its keyed state.

A declaration is inert until the runtime (a Job, or ``eddies.testing.Harness``) binds it to a
key-scoped store; the bound handle then replaces it on the function instance. Using a
declaration unbound raises :class:`~eddies.errors.StateNotBoundError`.

>>> class Counter:
...     count = ValueState("count", default=0)
>>> Counter.count
ValueState('count')
>>> Counter().count.get()
Traceback (most recent call last):
...
eddies.errors.StateNotBoundError: ValueState 'count' is not bound to a key: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eddies.errors import ConfigError, StateNotBoundError
from eddies.state.ttl import Ttl

__all__ = [
    "BroadcastState",
    "ListState",
    "MapState",
    "ReducingState",
    "StateDescriptor",
    "ValueState",
]


# What a bound handle offers: using one on an unbound declaration gets the explanation.
_HANDLE_METHODS = frozenset(
    {
        "get",
        "set",
        "value",
        "update",
        "clear",
        "add",
        "add_all",
        "length",
        "is_empty",
        "put",
        "put_all",
        "contains",
        "keys",
        "values",
        "entries",
        "items",
        "remove",
        "remove_all",
        "get_many",
        "peek",
    }
)


class StateDescriptor:
    """Base of the state declarations: a name, an optional TTL, and a kind.

    Every kind also takes ``version=N, migrate=fn(old_value, old_version)`` and
    ``renamed_from="old"`` for restoring a savepoint into a changed job:

    >>> ValueState("totals", default=0, version=2, migrate=lambda v, n: v * 100,
    ...            renamed_from="acc").renamed_from
    'acc'
    """

    kind = "state"

    def __init__(self, name: str, *, ttl: Ttl | None = None, version: int = 1,
                 migrate: Callable[[Any, int], Any] | None = None,
                 renamed_from: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{type(self).__name__} needs a non-empty str name, got {name!r}")
        if name.startswith("__"):
            raise ConfigError(
                f"{type(self).__name__} name {name!r}: names starting with '__' are reserved "
                "for eddies' own column families; pick another name"
            )
        if ttl is not None and not isinstance(ttl, Ttl):
            raise ConfigError(
                f"{type(self).__name__} {name!r}: ttl must be an eddies.Ttl, e.g. "
                f"Ttl(minutes=10), got {ttl!r}"
            )
        if type(version) is not int or version < 1:
            raise ConfigError(f"{type(self).__name__} {name!r}: version must be an int >= 1, "
                              f"got {version!r}")
        if migrate is not None and not callable(migrate):
            raise ConfigError(f"{type(self).__name__} {name!r}: migrate must be a function "
                              f"fn(old_value, old_version), got {migrate!r}")
        if renamed_from is not None and (not isinstance(renamed_from, str) or not renamed_from
                                         or renamed_from == name):
            raise ConfigError(f"{type(self).__name__} {name!r}: renamed_from must be the "
                              f"state's former name (another non-empty str), got "
                              f"{renamed_from!r}")
        self.name = name
        self.ttl = ttl
        self.version = version
        """The shape of this state's values; a savepoint of another version is migrated
        with ``migrate`` at restore (see ``eddies.runtime.savepoint``)."""
        self.migrate = migrate
        self.renamed_from = renamed_from
        """The name this state had in the job a savepoint was taken from."""
        self.attr: str | None = None
        self.on_expire = False
        """Whether expired values are handed to the function's ``on_expire`` (ValueState
        and ReducingState)."""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __getattr__(self, item: str) -> Any:
        # Only the handle's methods get the explanation; anything else stays an AttributeError
        # so that getattr(descriptor, name, default) and hasattr() work as usual.
        if item not in _HANDLE_METHODS:
            raise AttributeError(f"{type(self).__name__} has no attribute {item!r}")
        raise StateNotBoundError(
            f"{type(self).__name__} {self.name!r} is not bound to a key: state handles work "
            "only inside on_event/on_timer of a function run by a Job or eddies.testing.Harness"
        )


class ValueState(StateDescriptor):
    """One value per key: ``get(default)``, ``set(v)``, ``clear()``.

    ``default`` is what ``get()`` returns for a key with no value.

    ``on_expire=True`` (with an event-time ``ttl``) calls the function's
    ``on_expire(state_name, value, ctx)`` once for each value that expires, with ``ctx.key``
    its key, when the watermark reaches its expiry and before any record or timer beyond
    it; what it returns or yields is emitted as ``on_timer``'s outputs are. Expiries fire
    in time order (then by stored key, then state name), before the timers due at the same
    time, and the value is deleted before the call (``on_expire`` may set a new one).

    >>> ValueState("acc", ttl=Ttl(minutes=10), on_expire=True).on_expire
    True
    >>> ValueState("acc", on_expire=True)
    Traceback (most recent call last):
    ...
    eddies.errors.ConfigError: ValueState 'acc': on_expire=True needs an event-time ttl, ...
    """

    kind = "value"

    def __init__(self, name: str, default: Any = None, *, ttl: Ttl | None = None,
                 on_expire: bool = False, version: int = 1,
                 migrate: Callable[[Any, int], Any] | None = None,
                 renamed_from: str | None = None) -> None:
        super().__init__(name, ttl=ttl, version=version, migrate=migrate, renamed_from=renamed_from)
        self.default = default
        self.on_expire = _check_on_expire(self, on_expire)


class ListState(StateDescriptor):
    """A list per key; with a TTL, each element expires on its own."""

    kind = "list"


class MapState(StateDescriptor):
    """A map per key, with range reads over structured (tuple) map keys and per-entry TTL.

    An entry may also carry metadata and an absolute expiry, as in a KV store:
    ``put(k, v, expire_at=ms, metadata=m)``, read back with ``get_with_metadata(k)`` (an
    :class:`~eddies.state.entries.Entry`) or ``entries(with_metadata=True)``. ``expire_at``
    is on the state's TTL clock (event time unless its Ttl says processing) and needs no
    declared Ttl.
    """

    kind = "map"


class ReducingState(StateDescriptor):
    """One value per key folded with an associative ``fn(acc, value)`` on every ``add``;
    ``on_expire=True`` as for :class:`ValueState`."""

    kind = "reducing"

    def __init__(
        self, name: str, fn: Callable[[Any, Any], Any], *, ttl: Ttl | None = None,
        on_expire: bool = False, version: int = 1,
        migrate: Callable[[Any, int], Any] | None = None,
        renamed_from: str | None = None,
    ) -> None:
        super().__init__(name, ttl=ttl, version=version, migrate=migrate, renamed_from=renamed_from)
        self.on_expire = _check_on_expire(self, on_expire)
        if not callable(fn):
            raise ConfigError(f"ReducingState {name!r}: fn must be callable, e.g. max or operator.add")
        self.fn = fn


class BroadcastState(StateDescriptor):
    """One table shared by every parallel instance; written only from ``on_broadcast``.

    ``max_bytes`` (10 MB by default) bounds its msgpack size: the table is replicated to every
    worker, so it is for rules and reference data, not for keyed data.
    """

    kind = "broadcast"

    def __init__(self, name: str, *, max_bytes: int = 10 * 1024 * 1024,
                 version: int = 1,
                 migrate: Callable[[Any, int], Any] | None = None,
                 renamed_from: str | None = None) -> None:
        super().__init__(name, version=version, migrate=migrate, renamed_from=renamed_from)
        self.max_bytes = max_bytes


def _check_on_expire(descriptor: StateDescriptor, on_expire: bool) -> bool:
    if on_expire not in (True, False):
        raise ConfigError(f"{type(descriptor).__name__} {descriptor.name!r}: on_expire must be "
                          f"True or False, got {on_expire!r}")
    if on_expire and (descriptor.ttl is None or descriptor.ttl.time != "event"):
        raise ConfigError(
            f"{type(descriptor).__name__} {descriptor.name!r}: on_expire=True needs an "
            "event-time ttl, e.g. ttl=Ttl(minutes=10) (expiries fire as the watermark "
            "passes them)")
    return bool(on_expire)


def declared_states(obj: object) -> dict[str, StateDescriptor]:
    """The state declarations on ``obj``'s class, by attribute name (checks name clashes)."""
    found: dict[str, StateDescriptor] = {}
    names: dict[str, str] = {}
    for klass in reversed(type(obj).__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, StateDescriptor):
                found[attr] = value
    for attr, desc in found.items():
        other = names.get(desc.name)
        if other is not None and found[other] is not desc:
            raise ConfigError(
                f"{type(obj).__name__}: attributes {other!r} and {attr!r} both declare state "
                f"named {desc.name!r}; state names must be unique within a function"
            )
        names[desc.name] = attr
    return found
