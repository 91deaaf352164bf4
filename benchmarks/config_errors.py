"""Times every bad config of tests/bad_configs.py and writes the table in docs/config-errors.md.

    python benchmarks/config_errors.py [N_CLI]

Each case is loaded in-process with `load_config` (after one warm-up load, so imports are not
counted; the first, cold load is reported separately), and the first N_CLI cases (default: every
case) also end to end as `python -m rlhf.main <overrides>`: a fresh interpreter, from start to exit.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bad_configs import CASES, make_fixtures, resolve  # noqa: E402


def main() -> None:
    n_cli = int(sys.argv[1]) if len(sys.argv) > 1 else len(CASES)
    tmp = Path(tempfile.mkdtemp())
    make_fixtures(tmp)
    t = time.perf_counter()
    from rlhf.config import ConfigError, load_config

    load_config([])
    cold = time.perf_counter() - t
    rows = []
    for i, (overrides, _) in enumerate(CASES):
        args = resolve(overrides, tmp)
        t = time.perf_counter()
        try:
            load_config(args)
            raise SystemExit(f"{overrides} did not fail")
        except ConfigError as e:
            message = str(e)
        in_process = time.perf_counter() - t
        cli = ""
        if i < n_cli:
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "rlhf.main", *args], capture_output=True, text=True, cwd=ROOT)
            cli = f"{time.perf_counter() - t:.2f} s"
            assert proc.returncode == 2 and "config error" in proc.stderr, proc.stderr
        shown = " ".join(overrides).replace("|", "\\|")
        rows.append(f"| `{shown}` | {message.replace(str(tmp), '{tmp}').replace('|', chr(92) + '|').replace(chr(10), ' ')} "
                    f"| {in_process * 1000:.0f} ms | {cli} |")
        print(rows[-1], flush=True)
    times = sorted(float(r.split("|")[-3].split()[0]) for r in rows)
    print(f"cold first load_config (imports included): {cold:.2f} s; in-process per case: median "
          f"{times[len(times) // 2]:.0f} ms, max {times[-1]:.0f} ms")


if __name__ == "__main__":
    main()
