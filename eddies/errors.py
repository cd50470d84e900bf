"""The exceptions eddies raises, all under one root so ``except EddiesError`` catches them.

::

    EddiesError
    ├── ConfigError                 a job, state declaration or option is wrong; fix the code
    │   ├── StateIdentityError      the state dir belongs to another job, or its inputs changed
    │   └── SavepointError          a savepoint cannot be read, or does not fit the job restored
    ├── StateError                  keyed state was used wrongly or holds something unusable
    │   ├── StateNotBoundError      a state handle used outside a running function
    │   ├── StateSerializationError a value msgpack cannot encode (raised at set/put time)
    │   ├── KeyEncodingError        a key that is not a tuple of None/bool/int/float/str/bytes
    │   ├── MissingTimestampError   an event-time TTL write without an event timestamp
    │   ├── ReadOnlyStateError      a write to BroadcastState outside on_broadcast
    │   └── StateTooLargeError      BroadcastState over its size limit
    ├── BackendError                the storage backend failed or cannot be opened
    │   ├── StateDirLockedError     a RocksDB dir already open in another process or job
    │   ├── StateCorruptionError    stored state failed a checksum or is incomplete; never read as empty
    │   └── StateIOError            the disk or the OS refused (full, out of descriptors, permission)
    └── UserFunctionError           user code raised; names the operator, key and record

Library errors are wrapped with ``raise ... from exc`` so the original cause stays visible.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ConfigError",
    "EddiesError",
    "KeyEncodingError",
    "MissingTimestampError",
    "ReadOnlyStateError",
    "SavepointError",
    "StateCorruptionError",
    "StateDirLockedError",
    "StateError",
    "StateIOError",
    "StateIdentityError",
    "StateNotBoundError",
    "StateSerializationError",
    "StateTooLargeError",
    "UserFunctionError",
]


class EddiesError(Exception):
    """Root of every error eddies raises."""


class ConfigError(EddiesError, ValueError):
    """A job, a state declaration or an option is invalid; the message names the fix."""


class StateIdentityError(ConfigError):
    """A state dir was written by another job (name, operators, states), or its sources changed
    so that its positions mean nothing, or it already ended its input's event time; raised
    before the first event, naming what differs and what to do."""


class SavepointError(ConfigError):
    """A savepoint is unreadable (unknown format version, truncated, not a savepoint), or its
    operators and states do not fit the job restored from it; the message names the operator
    and state and what to do."""


class StateError(EddiesError):
    """Keyed state was used wrongly or holds something that cannot be stored."""


class StateNotBoundError(StateError):
    """A state handle was used outside a function run by a Job or the test Harness."""


class StateSerializationError(StateError, TypeError):
    """A value cannot be encoded with msgpack; raised when it is set, not at flush."""


class KeyEncodingError(StateError, TypeError):
    """A key element has a type the order-preserving key codec cannot encode."""


class MissingTimestampError(StateError):
    """An event-time TTL state was written while handling a record with no timestamp."""


class ReadOnlyStateError(StateError):
    """BroadcastState was written from on_event; only on_broadcast may write it."""


class StateTooLargeError(StateError):
    """BroadcastState grew over its size limit."""


class BackendError(EddiesError):
    """The state backend failed, or could not be opened."""


class StateDirLockedError(BackendError):
    """A RocksDB state dir is held by another process (a running job) or another backend."""


class StateCorruptionError(BackendError):
    """Stored state is corrupt or incomplete (a failed checksum, a missing CURRENT or MANIFEST,
    a dir of another layout); the job stops instead of reading it as empty state."""


class StateIOError(BackendError):
    """The disk or the OS refused a state read or write (disk full, too many open files,
    permission denied); the last checkpoint is intact, so fix the cause and run again."""


class UserFunctionError(EddiesError):
    """User code raised while processing; the message names the operator, key and record."""
