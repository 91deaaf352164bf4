"""Config validation: bad input fails before anything heavy, naming the key and a fix."""

import subprocess
import sys
import time

import pytest

from bad_configs import CASES, make_fixtures, resolve
from rlhf.config import ConfigError, load_config


def test_defaults_compose_and_are_typed():
    cfg = load_config([])
    assert cfg.algo.name == "grpo" and cfg.actor.engine == "automodel"
    assert isinstance(cfg.rl.lr, float) and isinstance(cfg.actor.world_size, int)


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "dapo", "gspo", "ppo"])
def test_every_algorithm_composes(algo):
    cfg = load_config([f"algo={algo}"])
    assert cfg.algo.name == algo
    assert cfg.algo.uses_critic == (algo == "ppo")


def test_overrides_apply():
    cfg = load_config(["sft.steps=7", "rl.steps=3", "trainer.output_dir=/tmp/x", "algo=grpo", "actor.engine=automodel"])
    assert (cfg.sft.steps, cfg.rl.steps, cfg.trainer.output_dir) == (7, 3, "/tmp/x")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    make_fixtures(tmp)
    return tmp


def test_there_are_at_least_30_distinct_bad_configs():
    assert len({tuple(o) for o, _ in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("override, must_name", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_config_fails_naming_the_problem_and_the_fix(override, must_name, fixtures):
    with pytest.raises(ConfigError) as e:  # its time to fail: benchmarks/config_errors.py
        load_config(resolve(override, fixtures))
    for word in must_name:
        assert word in str(e.value)


def test_cli_fails_fast_before_ray(tmp_path):
    t = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.main", "rl.stpes=3", f"trainer.output_dir={tmp_path}/out"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "rl.stpes" in proc.stderr and "rl.steps" in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr and not (tmp_path / "out").exists()
    assert time.time() - t < 60


def test_a_misspelled_column_fails_before_ray_and_writes_nothing(tmp_path):
    """The columns of the data files are checked with the config (benchmarks/config_errors.py times
    it); a bad row, found only when every row is read, also stops the run before the output folder
    is written."""
    train = tmp_path / "train.jsonl"
    train.write_text('{"problem": "1+1=", "answer": "2"}\n{"problem": 7, "answer": "4"}\n')
    for key, message in [("problme", "no column 'problme' (data.prompt_key); the file's columns are: answer, problem. "
                                     "Did you mean data.prompt_key=problem?"),
                         ("problem", "row 2, column 'problem' must be a string, got int 7")]:
        proc = subprocess.run([sys.executable, "-m", "rlhf.main", f"data.train_files=[{train}]", f"data.prompt_key={key}",
                               f"trainer.output_dir={tmp_path}/out"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert "Ray" not in proc.stdout + proc.stderr
        assert not (tmp_path / "out").exists()


def test_validation_imports_none_of_the_heavy_libraries(tmp_path):
    """Bad configs fail in well under 2 s because validation imports none of the libraries that take
    a second or more to import; checked on the default config, which passes every check, and with
    trainer.resume=auto (the resumable-state check; no state there: a fresh start)."""
    heavy = ["ray", "torch", "vllm", "transformers", "tensordict", "datasets", "nemo_automodel"]
    code = (f"import sys; from rlhf.main import main; assert main(['--cfg', 'trainer.output_dir={tmp_path}/out', 'trainer.resume=auto']) == 0; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


def test_empty_stop_string_is_refused():
    with pytest.raises(ConfigError, match="rl.stop"):
        load_config(['rl.stop=["", "x"]'])


def test_a_lora_run_starts_no_reference_group():
    from rlhf.config import trainer_groups

    full = load_config(["algo.kl_coef=0.05", "stages=[rl]"])
    lora = load_config(["algo.kl_coef=0.05", "stages=[rl]", "actor.lora.rank=8"])
    assert sorted(trainer_groups(full)) == ["actor", "ref"] and sorted(trainer_groups(lora)) == ["actor"]
