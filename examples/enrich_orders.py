"""Orders enriched with the customer's profile as it was when the order was placed.

An as-of (temporal) join: each order in ``data/orders.jsonl`` is joined with the latest
profile update of its customer (``data/profiles.jsonl``) whose timestamp is at or before the
order's, so an order placed before an upgrade gets the old tier and discount, whatever order
the two files are read in. An order goes out when the join's watermark (the lower of its two
inputs') reaches its time (profile updates for it may still arrive until then); orders of
customers with no profile yet keep ``profile: null`` (``how="left"``). The total is the
amount after the tier's discount.
"""

from __future__ import annotations

from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent


def enrich(order, profile):
    discount = profile["discount"] if profile is not None else 0
    return {"order": order["id"], "customer": order["customer"], "ts": order["ts"],
            "amount": order["amount"],
            "profile": None if profile is None else {"tier": profile["tier"],
                                                      "since": profile["ts"]},
            "total": round(order["amount"] * (100 - discount) / 100, 2)}


def build(orders: str | Path = HERE / "data" / "orders.jsonl",
          profiles: str | Path = HERE / "data" / "profiles.jsonl",
          output: str | Path = "out/enriched_orders.jsonl") -> ed.Job:
    job = ed.Job("enrich-orders")
    updates = job.source(ed.sources.jsonl(profiles), timestamp="ts",
                         watermarks=ed.BoundedOutOfOrderness(5_000), name="profiles")
    (job.source(ed.sources.jsonl(orders), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(5_000), name="orders")
        .key_by("customer")
        .join_asof(updates.key_by("customer"), how="left", fn=enrich, name="enrich")
        .sink(ed.sinks.jsonl(output)))
    return job


job = build()
