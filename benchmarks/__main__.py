"""One runner for the benchmarks, by suite.

    python -m benchmarks --list                      the suites, one line each
    python -m benchmarks SUITE --help                a suite's options
    python -m benchmarks SUITE [--out DIR] [--timeout S] [options]

Each suite prints its figures as a short table last and writes them, with the machine (GPU name
and count or CPU model, versions of torch, vLLM, Automodel, TRL), the commit and the date, to
DIR/SUITE.json (default DIR: .work/benchmarks/SUITE-DATE-TIME/), each run's log and JSON beside it
in DIR/runs/. Exit code 0 when every run succeeded, 1 when one failed, 2 when the suite cannot
run here (too few GPUs, a benchmark-only package missing) or its arguments are wrong. Setting up
the machine (drivers, CUDA builds of torch and vLLM, TRL) is the caller's: the runner uses the
Python it runs in. docs/benchmarks.md has the current figures and the command behind each.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.runner import CannotRun, Context, child_env  # noqa: E402
from benchmarks.suites import SUITES  # noqa: E402


def listing() -> str:
    width = max(map(len, SUITES))
    return "\n".join(f"  {name:<{width}}  {s.purpose}" for name, s in SUITES.items())


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\nsuites:\n" + listing())
        return 0 if argv else 2
    if argv[0] == "--list":
        print(listing())
        return 0
    name = argv[0]
    if name not in SUITES:
        near = difflib.get_close_matches(name, SUITES, n=2)
        print(f"no suite {name!r}{f'; did you mean {near[0]}?' if near else ''} Suites:\n{listing()}", file=sys.stderr)
        return 2
    suite = SUITES[name]
    args = suite.parse(argv[1:])
    os.environ.update(child_env())
    ctx = Context(name, args.out, args.timeout, argv)
    try:
        suite.run(ctx, args)
    except CannotRun as e:
        print(f"python -m benchmarks {name}: {e}", file=sys.stderr)
        if not ctx.runs:
            return 2
        ctx.note(f"stopped: {e}")
    return ctx.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
