"""Times every bad config of tests/bad_configs.py and writes the table in docs/config-errors.md.

    python benchmarks/config_errors.py [N_CLI]

Each case is loaded in-process with `load_run` (the config and the run's preflight) (after one warm-up load, so imports are not
counted; the first, cold load is reported separately), and the first N_CLI cases (default: every
case) also end to end as `python -m rlhf.main <overrides>`: a fresh interpreter, from start to exit.
"""

from __future__ import annotations

import os
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
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp())
    make_fixtures(tmp)
    t = time.perf_counter()
    from rlhf.config import ConfigError
    from rlhf.orchestration.preflight import load_run

    load_run([])
    cold = time.perf_counter() - t
    rows = []
    for i, (overrides, _) in enumerate(CASES):
        args = resolve(overrides, tmp)
        t = time.perf_counter()
        try:
            load_run(args)
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
        message = message.replace(str(tmp), "{tmp}").replace(str(ROOT), "<repo>")
        rows.append(f"| `{shown}` | {message.replace('|', chr(92) + '|').replace(chr(10), ' ')} "
                    f"| {in_process * 1000:.0f} ms | {cli} |")
        print(rows[-1], flush=True)
    times = sorted(float(r.split("|")[-3].split()[0]) for r in rows)
    cli_times = sorted(float(r.split("|")[-2].split()[0]) for r in rows if r.split("|")[-2].strip())
    summary = (f"In-process (`load_run`, imports already loaded): median {times[len(times) // 2]:.0f} ms, max "
               f"{times[-1]:.0f} ms; the first, cold call (imports included) took {cold:.2f} s.")
    if cli_times:
        summary += (f" End to end (`python -m rlhf.main <overrides>`, a fresh interpreter, to exit code 2): "
                    f"median {cli_times[len(cli_times) // 2]:.2f} s, max {cli_times[-1]:.2f} s over {len(cli_times)} cases.")
    summary += (f" Load average of the machine ({os.cpu_count()} cores): {load_before:.1f} at the start, "
                f"{os.getloadavg()[0]:.1f} at the end.")
    print(summary)
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "config-errors.md").write_text(HEADER.format(n=len(rows), summary=summary) + "\n".join(rows) + "\n")


HEADER = """# Bad configs and the errors they give

Every config below fails in `load_run` (rlhf/config/, rlhf/orchestration/preflight.py), before Ray or any model starts, with
`config error: ...` and exit code 2. Each case is a test (`tests/test_config.py`, cases in
`tests/bad_configs.py`); `python benchmarks/config_errors.py` measures the times and rewrites this
page. `{{tmp}}` stands for a folder the benchmark fills with broken model folders (weights only as
pickle `.bin`, no tokenizer, code in `auto_map`, 3 attention heads), data files and reward files
(a function misnamed, one that takes other arguments, a file that fails to load); `<repo>` for
the project's folder, where the benchmark runs.

{summary}

Measured on the project's shared CPU machine while other jobs ran on it (see the load average),
so the times include waiting for a core.

| overrides | error | in-process | `python -m rlhf.main` |
| --- | --- | --- | --- |
"""


if __name__ == "__main__":
    main()
