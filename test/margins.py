"""Wall-clock margins: how close each timing-dependent check came to its limit.

With DREAM_VLA_MARGINS=FILE set, every wait with a deadline (GraphClient waits,
`rosutil.wait_for`, subprocesses run with a timeout) and every explicit timing check
(`within`) appends one JSON line to FILE: the test, what was timed, the observed
value and its limit. `python test/margins.py [--per-test] FILE...` prints each
check's (or each test's tightest check's) worst margin over all the runs in those
files. Without the variable nothing is written and
the checks behave exactly the same."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

ENV = "DREAM_VLA_MARGINS"


def current_test() -> str:
    """The running test's node id (pytest sets PYTEST_CURRENT_TEST: 'id (phase)')."""
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]


def record(what: str, observed: float, limit: float, lower: bool = False) -> None:
    """One observation of a timed check: `observed` must stay below `limit` (above it
    when `lower`)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = {"test": current_test(), "what": what, "observed": float(observed)}
    line |= {"limit": float(limit), "lower": lower}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def within(observed: float, limit: float, what: str) -> bool:
    """`observed < limit`, recorded: use as `assert within(lag, 0.5, "median lag s")`."""
    record(what, observed, limit)
    return observed < limit


def above(observed: float, limit: float, what: str) -> bool:
    """`observed > limit`, recorded (a lower bound that a slow machine could break)."""
    record(what, observed, limit, lower=True)
    return observed > limit


def margin(line: dict) -> float:
    """Headroom as a fraction of the limit: 1 - observed/limit (upper bounds) or
    observed/limit - 1 (lower bounds); negative means the check failed."""
    observed, limit = line["observed"], line["limit"]
    if limit == 0:
        return float("inf") if (observed > 0) == line["lower"] else float("-inf")
    ratio = observed / limit
    return ratio - 1 if line["lower"] else 1 - ratio


def report(paths: list[str], per_test: bool = False) -> str:
    """Markdown table: each (test, check), its worst observation over all runs; with
    `per_test`, only each test's tightest check."""
    worst: dict[tuple[str, str], dict] = {}
    runs: dict[tuple[str, str], int] = defaultdict(int)
    for path in paths:
        with open(path) as f:
            for text in f:
                line = json.loads(text)
                line["what"] = " ".join(line["what"].split())[:80]  # one short line
                key = (line["test"], line["what"])
                runs[key] += 1
                if key not in worst or margin(line) < margin(worst[key]):
                    worst[key] = line
    if per_test:
        tightest: dict[str, tuple[str, str]] = {}
        for key, line in worst.items():
            best = tightest.get(key[0])
            if best is None or margin(line) < margin(worst[best]):
                tightest[key[0]] = key
        worst = {key: worst[key] for key in tightest.values()}
    rows = [
        "| test | check | worst observed | limit | margin | samples |",
        "|---|---|---|---|---|---|",
    ]
    for key, line in sorted(worst.items(), key=lambda kv: margin(kv[1])):
        test = key[0].replace("test/", "")
        bound = ">" if line["lower"] else "<"
        rows.append(
            f"| {test} | {key[1]} | {line['observed']:.3g} | {bound} {line['limit']:.3g} "
            f"| {margin(line):.0%} | {runs[key]} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(report([a for a in args if a != "--per-test"], per_test="--per-test" in args))
