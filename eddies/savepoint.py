"""The State Processor API: read a savepoint's operators, states and entries as Python
values, transform them, and write a savepoint, also from plain data (initial balances from a
CSV, say), so that state can be prepared offline and a job started from it.

Take a savepoint with ``eddies savepoint create STATE_DIR OUT`` (or :func:`create_savepoint`)
and start a job from one with ``eddies run ... --from-savepoint OUT`` (or
``run_local(job, state, from_savepoint=OUT)``). The file format and the restore rules are
in ``eddies.runtime.savepoint`` and ``eddies.runtime.restore``.

>>> import csv, io, os, tempfile
>>> import eddies as ed
>>> from eddies.savepoint import SavepointWriter, read_savepoint
>>> rows = csv.DictReader(io.StringIO("acct,balance\\nalice,100\\nbob,5\\n"))
>>> path = os.path.join(tempfile.mkdtemp(), "bank.sp")
>>> with SavepointWriter(path, job="bank") as w:
...     w.state("Bank", "balance", "value", ((r["acct"], int(r["balance"])) for r in rows))
>>> [(s.operator, s.name, s.kind, s.entries) for s in read_savepoint(path).states]
[('Bank', 'balance', 'value', 2)]
>>> class Bank(ed.KeyedProcessFunction):
...     balance = ed.ValueState("balance", default=0)
...     def on_event(self, event, ctx):
...         self.balance.set(self.balance.get() + event["amount"])
...         yield {"acct": ctx.key, "balance": self.balance.get()}
>>> job = ed.Job("bank"); out = ed.sinks.collect()
>>> (job.source(ed.sources.iterable([{"acct": "bob", "amount": 10}]))
...     .key_by("acct").process(Bank()).sink(out))
>>> ed.run_local(job, from_savepoint=path).collected(out)
[{'acct': 'bob', 'balance': 15}]
"""

from __future__ import annotations

from eddies.runtime.savepoint import (
    FORMAT_VERSION,
    OperatorInfo,
    Savepoint,
    SavepointEntry,
    SavepointWriter,
    StateInfo,
    create_savepoint,
    read_savepoint,
)

__all__ = [
    "FORMAT_VERSION",
    "OperatorInfo",
    "Savepoint",
    "SavepointEntry",
    "SavepointWriter",
    "StateInfo",
    "create_savepoint",
    "read_savepoint",
]
