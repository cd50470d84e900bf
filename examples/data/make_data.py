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


def main() -> None:
    for name, lines in [("clicks", clicks()), ("payments", payments()),
                        ("rule_payments", rule_payments()), ("rules", rules())]:
        (HERE / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
