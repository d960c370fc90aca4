"""Each bench's headline figures beside their goals, collected by ``bench/run_all.py``.

A bench calls ``report`` once per figure; it always prints the figure, and when run by
``run_all.py`` (which sets ``BENCH_FIGURES`` to a file) it also appends it there as one JSON
line, so ``make bench`` can print every figure of every bench in one table. ``timed`` is how
the benches time a call.
"""

from __future__ import annotations

import json
import operator
import os
import statistics
import time
from collections.abc import Callable

CHECKS = {"<=": operator.le, ">=": operator.ge}


def report(name: str, value: float | None, goal: float | None = None, check: str = "<=",
           unit: str = "", note: str = "") -> bool | None:
    """Record one figure. ``check`` says which side of ``goal`` meets it; ``value`` None is a
    figure not measured here (``note`` says why). Returns whether the goal is met."""
    met = None if value is None or goal is None else bool(CHECKS[check](value, goal))
    figure = {"name": name, "value": value, "goal": goal, "check": check, "unit": unit,
              "met": met, "note": note}
    shown = "not measured" if value is None else f"{value:.4g}{unit}"
    target = "" if goal is None else f" (goal {check} {goal:g}{unit}: " \
        f"{'met' if met else 'not met' if met is not None else '-'})"
    print(f"FIGURE {name}: {shown}{target}{' - ' + note if note else ''}", flush=True)
    if path := os.environ.get("BENCH_FIGURES"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(figure) + "\n")
    return met


def timed(fn: Callable[[], object], repeat: int, warm: bool = False) -> float:
    """Median seconds of ``repeat`` calls (after one untimed call when ``warm``)."""
    if warm:
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
