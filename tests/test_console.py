"""What a run prints and where it writes, without starting one: the stages' progress as plain lines
off a terminal, the third-party warnings dropped at their source (and only those), the work folder."""

import io
import logging
import os
import subprocess
import sys
import warnings

import pytest

from core import quiet
from rlhf.orchestration import environment
from rlhf.output import metrics


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(metrics.time, "monotonic", c)
    return c


def _stage(bar, steps: int, clock: Clock, seconds_per_step: float):
    for step in range(bar.n + 1, steps + 1):
        clock.now += seconds_per_step
        bar.update()
        bar.set_postfix_str(f"loss={1 / step:.3g}")
    bar.close()


def test_progress_off_a_terminal_is_a_line_per_tenth_and_one_at_the_end(clock):
    out = io.StringIO()
    _stage(metrics.PlainProgress("sft", 1000, out=out), 1000, clock, 0.25)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"[sft] step {s}/1000 ({s // 10}%)" for s in range(100, 1001, 100)]
    assert lines[-1] == "[sft] step 1000/1000 (100%), 4.00 step/s, loss=0.001"


def test_progress_of_a_slow_stage_comes_every_30_seconds(clock):
    out = io.StringIO()
    _stage(metrics.PlainProgress("grpo", 60, out=out), 60, clock, 7.0)  # a tenth is 6 steps, 42 s
    steps = [int(line.split()[2].split("/")[0]) for line in out.getvalue().splitlines()]
    assert steps == [5, 6, 11, 12, 17, 18, 23, 24, 29, 30, 35, 36, 41, 42, 47, 48, 53, 54, 59, 60]
    assert "7.00 s/step" in out.getvalue().splitlines()[-1]


def test_progress_of_a_resumed_stage_counts_from_where_it_resumed(clock):
    out = io.StringIO()
    bar = metrics.PlainProgress("sft", 100, initial=50, out=out)
    _stage(bar, 100, clock, 0.5)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[sft] step 60/100 (60%), 2.00 step/s") and len(lines) == 5


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = metrics.stage_bar("sft", 10)
    assert type(bar).__name__ == "tqdm"
    bar.close()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(metrics.stage_bar("sft", 10), metrics.PlainProgress)


def test_each_filter_drops_its_own_message_and_nothing_else(capsys):
    quiet.install()
    for name, message, _why in quiet.LOGS:
        logger = logging.getLogger(name)
        assert any(isinstance(f, quiet._Drop) for f in logger.filters), name
    torchao = logging.getLogger("torchao")
    kept = []
    handler = logging.Handler()
    handler.emit = kept.append
    torchao.addHandler(handler)
    try:
        torchao.warning("Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
                        "Could not load this library: /venv/...")
        torchao.warning("Failed to load /venv/lib/python3.11/site-packages/other/_C.so: nope")
        torchao.warning("some other torchao warning")
    finally:
        torchao.removeHandler(handler)
    assert [r.getMessage() for r in kept] == ["Failed to load /venv/lib/python3.11/site-packages/other/_C.so: nope",
                                             "some other torchao warning"]
    cpu_worker = logging.getLogger("vllm.v1.worker.cpu_worker")
    assert not cpu_worker.filter(logging.makeLogRecord({"msg": "%s is not found in LD_PRELOAD. For best performance",
                                                         "args": ("libtcmalloc",)}))
    assert cpu_worker.filter(logging.makeLogRecord({"msg": "Available memory on node 0 is low"}))
    with warnings.catch_warnings(record=True) as caught:
        quiet.install()  # inside catch_warnings, which restores the filters on leaving
        warnings.warn("Transformer Engine and Apex are not installed. Falling back to local implementations", UserWarning)
        warnings.warn("`torch.distributed.reduce_op` is deprecated, please use `torch.distributed.ReduceOp` instead",
                      FutureWarning)
        warnings.warn("Transformer Engine and Apex are not installed", DeprecationWarning)  # another category: shown
        warnings.warn("our own warning", UserWarning)
    assert [(w.category, str(w.message)) for w in caught] == [
        (DeprecationWarning, "Transformer Engine and Apex are not installed"), (UserWarning, "our own warning")]


def test_the_work_folder_takes_every_cache_a_user_did_not_place(tmp_path, monkeypatch):
    for var in environment.PLACES:
        monkeypatch.delenv(var, raising=False)
    mine = {"VLLM_CACHE_ROOT": str(tmp_path / "mine"), "RAY_TMPDIR": str(tmp_path / "ray")}  # set by the user: kept
    for var, value in mine.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("RLHF_WORK", str(tmp_path / "w"))
    monkeypatch.setattr(environment.tempfile, "tempdir", None)
    assert environment.use_work_folder() == []
    for var, sub in environment.PLACES.items():
        want = mine.get(var, str(tmp_path / "w" / sub))
        assert os.environ[var] == want and (var in mine or (tmp_path / "w" / sub).is_dir()), var
    assert environment.tempfile.gettempdir() == str(tmp_path / "w" / "tmp")


def test_a_work_folder_too_deep_for_rays_sockets_leaves_ray_in_the_system_temp(tmp_path, monkeypatch):
    for var in environment.PLACES:
        monkeypatch.delenv(var, raising=False)
    deep = tmp_path / ("d" * 60)
    monkeypatch.setenv("RLHF_WORK", str(deep))
    monkeypatch.setattr(environment.tempfile, "tempdir", str(tmp_path / "system"))
    (note,) = environment.use_work_folder()
    assert os.environ["RAY_TMPDIR"] == str(tmp_path / "system") and "107-byte limit" in note
    assert os.environ["TMPDIR"] == str(deep / "tmp")
    # Ray's own check (its socket path limit) agrees with ours at the boundary
    from ray._private.utils import validate_socket_filepath

    short = "/" + "s" * (106 - len(f"/ray/session_2026-01-01_00-00-00_000000_{os.getpid()}/sockets/plasma_store"))
    assert environment.ray_socket_fits(short) and not environment.ray_socket_fits(short + "s")
    validate_socket_filepath(f"{short}/ray/session_2026-01-01_00-00-00_000000_{os.getpid()}/sockets/plasma_store")
    with pytest.raises(OSError):
        validate_socket_filepath(f"{short}s/ray/session_2026-01-01_00-00-00_000000_{os.getpid()}/sockets/plasma_store")


def test_help_names_every_data_format():
    proc = subprocess.run([sys.executable, "-m", "rlhf.main", "--help"], capture_output=True, text=True, timeout=60)
    line = next(line for line in proc.stdout.splitlines() if "data.train_files" in line)
    for fmt in (".jsonl", ".json", ".parquet", ".csv", "save_to_disk"):
        assert fmt in line, fmt
