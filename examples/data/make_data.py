"""Regenerate the example inputs: ``python examples/data/make_data.py`` (deterministic)."""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def clicks(n: int = 5_000, users: int = 200, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    lines = []
    t0 = 1_700_000_000_000
    for i in range(n):
        ts = t0 + i * 100 - rng.randint(0, 4_000)
        lines.append(json.dumps({"user": f"u{rng.randrange(users)}", "ts": ts,
                                 "page": rng.choice(["/", "/cart", "/pay", "/help"]),
                                 "amount": round(rng.uniform(0, 50), 2)}))
        if i % 997 == 500:
            lines.append('{"user": "broken", "ts": ')  # a malformed line, on purpose
    return lines


def payments(n: int = 20_000, cards: int = 500, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    lines = []
    t0 = 1_700_000_000_000
    for i in range(n):
        ts = t0 + i * 50 - rng.randint(0, 4_000)
        r = rng.random()
        amount = round(rng.uniform(0.01, 0.99), 2) if r < 0.05 else (
            round(rng.uniform(501, 2000), 2) if r < 0.10 else round(rng.uniform(1, 400), 2))
        lines.append(json.dumps({"card": f"c{rng.randrange(cards)}", "ts": ts,
                                 "amount": amount}))
    return lines


def rule_payments(n: int = 3_000, cards: int = 50, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    t0 = 1_700_000_000_000
    return [json.dumps({"id": i, "card": f"c{rng.randrange(cards)}", "ts": t0 + i * 100 -
                        rng.randint(0, 1_500), "category": rng.choice(["food", "travel", "tech"]),
                        "amount": round(rng.uniform(1, 300), 2)}) for i in range(n)]


def rules() -> list[str]:
    t0 = 1_700_000_000_000
    return [json.dumps(r) for r in [
        {"category": "food", "limit": 100, "ts": t0},
        {"category": "travel", "limit": 250, "ts": t0},
        {"category": "tech", "limit": 150, "ts": t0 + 50_000},
        {"category": "food", "limit": 60, "ts": t0 + 150_000},
    ]]


def _shuffled(rows: list[dict], rng: random.Random, disorder: int) -> list[str]:
    """Rows in time order, each timestamp then moved back by up to ``disorder`` ms."""
    rows.sort(key=lambda r: r["ts"])
    for r in rows:
        r["ts"] -= rng.randint(0, disorder)
    return [json.dumps(r) for r in rows]


def orders(n: int = 10_000, customers: int = 300, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    t0 = 1_700_000_000_000
    return _shuffled([{"id": i, "customer": f"cust{rng.randrange(customers)}",
                       "ts": t0 + i * 100, "amount": round(rng.uniform(5, 500), 2)}
                      for i in range(n)], rng, 4_000)


def profiles(customers: int = 300, seed: int = 4, span: int = 1_000_000) -> list[str]:
    """A first profile for most customers (some only after their first orders), then
    upgrades and downgrades over the orders' time span."""
    rng = random.Random(seed)
    t0 = 1_700_000_000_000
    tiers = {"basic": 0, "silver": 5, "gold": 10, "platinum": 15}
    rows = []
    for c in range(customers):
        if rng.random() < 0.1:
            continue  # never has a profile
        ts = t0 + (rng.randint(0, span // 2) if rng.random() < 0.2 else 0)
        for _ in range(rng.randint(1, 6)):
            tier = rng.choice(list(tiers))
            rows.append({"customer": f"cust{c}", "ts": ts, "tier": tier,
                         "discount": tiers[tier]})
            ts += rng.randint(1, span // 3)
    return _shuffled(rows, rng, 4_000)


def impressions(n: int = 20_000, users: int = 400, ads: int = 20,
                seed: int = 8) -> tuple[list[str], list[str]]:
    """Ad impressions, and clicks on about one in twenty of them: most within minutes,
    some a little before the impression (clock skew), some too late to be attributed."""
    rng = random.Random(seed)
    t0 = 1_700_000_000_000
    shown, clicked = [], []
    for i in range(n):
        imp = {"id": f"imp{i}", "user": f"u{rng.randrange(users)}",
               "ad": f"ad{rng.randrange(ads)}", "ts": t0 + i * 50,
               "cost": rng.randint(1, 30)}
        shown.append(imp)
        if rng.random() < 0.05:
            delay = rng.choice([rng.randint(-1_500, 0), rng.randint(0, 60_000),
                                rng.randint(0, 700_000)])
            clicked.append({"id": f"click{len(clicked)}", "user": imp["user"],
                            "ad": imp["ad"], "ts": imp["ts"] + delay})
    return _shuffled(shown, rng, 8_000), _shuffled(clicked, rng, 8_000)


def main() -> None:
    shown, clicked = impressions()
    for name, lines in [("clicks", clicks()), ("payments", payments()),
                        ("rule_payments", rule_payments()), ("rules", rules()),
                        ("orders", orders()), ("profiles", profiles()),
                        ("impressions", shown), ("ad_clicks", clicked)]:
        (HERE / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
