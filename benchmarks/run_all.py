"""Run every ``benchmarks/bench_*.py`` and print their ratios in one table.

Each benchmark measures its own ratios within one run (ours vs a reference on the same data)
and prints them on lines starting with ``ratio``; this script collects those lines.
Usage: ``python benchmarks/run_all.py [--only tile,map] [-- extra args for every script]``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RATIO_LINE = re.compile(r"^\s*ratio\s+(?P<name>.+?)\s*=\s*(?P<value>[-+0-9.eE]+x?)\s*(?P<rest>.*)$")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="Comma-separated benchmark names, e.g. tile,map")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {f"bench_{name.strip()}.py" for name in args.only.split(",")}
        scripts = [s for s in scripts if s.name in wanted]
    rows: list[tuple[str, str, str, str]] = []
    failed = []
    for script in scripts:
        stage = script.stem.removeprefix("bench_")
        print(f"running {script.name} ...", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent
        )
        seconds = f"{time.perf_counter() - start:.0f} s"
        if proc.returncode != 0:
            failed.append(stage)
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            rows.append((stage, "FAILED", "; ".join(tail), seconds))
            continue
        found = False
        for line in proc.stdout.splitlines():
            match = RATIO_LINE.match(line)
            if match:
                found = True
                rows.append((stage, match["name"], match["value"], match["rest"] or seconds))
        if not found:
            rows.append((stage, "(no ratio printed)", "", seconds))
    width = max((len(r[1]) for r in rows), default=10)
    print()
    print(f"{'stage':<10} {'ratio':<{width}}  {'value':>8}  note")
    for stage, name, value, note in rows:
        print(f"{stage:<10} {name:<{width}}  {value:>8}  {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
