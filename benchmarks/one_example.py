"""One timed run of one example or its plain twin, in a process of its own.

``python -m benchmarks --examples`` starts one of these per measurement (see
``benchmarks/examples.py``). It prints one JSON line: the elapsed seconds, the events read,
the record count of each output file, and a digest of the normalized results, which the
parent compares between the example and its twin. The outputs stay in ``--out``, with the
counts in ``counts.json``, for the parent to show where results differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.examples import COUNTS, EXAMPLES, digest, normalized, run_eddies, run_plain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.one_example", description=__doc__)
    parser.add_argument("--example", required=True, choices=sorted(EXAMPLES))
    parser.add_argument("--impl", required=True, choices=["plain", "eddies"])
    parser.add_argument("--data", type=Path, required=True, help="dir of the generated inputs")
    parser.add_argument("--out", type=Path, required=True, help="dir for the outputs")
    args = parser.parse_args(argv)

    run = run_plain if args.impl == "plain" else run_eddies
    counts = run(args.example, args.data, args.out)
    results = normalized(args.example, args.out, counts)
    # For the parent to say where results differ, if they do.
    (args.out / COUNTS).write_text(json.dumps(counts))
    print(json.dumps({
        "elapsed_s": counts["elapsed_s"], "events": counts["events"],
        "outputs": {name: len(records) for name, records in results["outputs"].items()},
        "dead_letters": len(results["dead_letters"]), "late_dropped": results["late_dropped"],
        "digest": digest(results),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
