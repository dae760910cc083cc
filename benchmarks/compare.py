"""Run a benchmark against two source trees, alternately, and print both side by side.

    python benchmarks/compare.py OLD_TREE NEW_TREE [--rounds 3] -- benchmarks/X.py ARGS...

Each round runs the benchmark script once with ``PYTHONPATH=OLD_TREE`` and once with
``PYTHONPATH=NEW_TREE`` (the order alternates from round to round), so both see the same
machine and the same noise. The script's own output is compared line by line: every
number in a line is replaced by ``old -> new (ratio)``, each the median over the rounds.
Make ``OLD_TREE`` with ``git worktree add /tmp/old <commit>``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def _run(tree: str, command: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run(
        [sys.executable, *command], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def _numbers(line: str) -> list[float]:
    return [float(n.replace(",", "")) for n in _NUMBER.findall(line)]


def _fill(line: str, cells: list[str]) -> str:
    """``line`` with its numbers replaced, in order, by ``cells``."""
    pieces = _NUMBER.split(line)
    return "".join(p + (cells[i] if i < len(cells) else "") for i, p in enumerate(pieces))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    if "--" not in argv:
        parser.error("put the benchmark's command after --")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    runs: dict[str, list[list[str]]] = {args.old: [], args.new: []}
    for round_ in range(args.rounds):
        order = [args.old, args.new] if round_ % 2 == 0 else [args.new, args.old]
        for tree in order:
            runs[tree].append(_run(tree, command))
    old_runs, new_runs = runs[args.old], runs[args.new]
    print(f"{' '.join(command)}: {args.rounds} rounds, medians, old -> new (new/old)")
    for index, line in enumerate(new_runs[0]):
        shapes = {len(_numbers(run[index])) for run in old_runs + new_runs if index < len(run)}
        count = len(_numbers(line))
        if count == 0 or shapes != {count} or line.startswith("machine:"):
            print(line)
            continue
        old = [
            statistics.median(c) for c in zip(*(_numbers(r[index]) for r in old_runs), strict=True)
        ]
        new = [
            statistics.median(c) for c in zip(*(_numbers(r[index]) for r in new_runs), strict=True)
        ]
        cells = [
            f"{o:g} -> {n:g} ({n / o:.2f})" if o else f"{o:g} -> {n:g}"
            for o, n in zip(old, new, strict=True)
        ]
        print(_fill(line, cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
