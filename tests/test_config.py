"""Config validation: bad input fails before anything heavy, naming the key and a fix."""

import subprocess
import sys
import time

import pytest

from bad_configs import CASES, make_fixtures, resolve
from rlhf.config import ConfigError, load_config
from rlhf.orchestration.preflight import load_run


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
        load_run(resolve(override, fixtures))
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


def test_a_misspelled_column_fails_before_ray_and_writes_nothing(tmp_path, tiny_model):
    """The columns of the data files are checked with the config (benchmarks/config_errors.py times
    it); a bad row, found only when every row is read, also stops the run before Ray starts and the
    output folder is written, with the embedded model and with a model folder."""
    train = tmp_path / "train.jsonl"
    train.write_text('{"problem": "1+1=", "answer": "2", "response": "2"}\n{"problem": 7, "answer": "4", "response": "4"}\n')
    for key, model, message in [
            ("problme", "null", "no column 'problme' (data.prompt_key); the file's columns are: answer, problem, response. "
                                "Did you mean data.prompt_key=problem?"),
            ("problem", "null", "row 2, column 'problem' must be a string, got int 7"),
            ("problem", tiny_model, "row 2, column 'problem' must be a string, got int 7")]:
        proc = subprocess.run([sys.executable, "-m", "rlhf.main", f"data.train_files=[{train}]", f"data.prompt_key={key}",
                               f"model.path={model}", f"trainer.output_dir={tmp_path}/out"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert "start-up: Ray" not in proc.stdout  # the phase line of Ray's start
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


@pytest.mark.parametrize("overrides", [["algo=reinforce_pp", "rl.n=1"], ["algo=ppo", "rl.n=1"]])
def test_one_sample_per_prompt_is_valid_for_estimators_without_groups(overrides):
    """algo.norm_by_std divides GRPO's group advantages only; REINFORCE++ and PPO need no group."""
    assert load_config(overrides).rl.n == 1


def test_too_few_gpus_names_the_keys_that_asked_and_the_cpu_fix(monkeypatch):
    monkeypatch.setattr("rlhf.config.checks._gpu_count", lambda: 0)
    with pytest.raises(ConfigError) as e:
        load_config(["actor.num_gpus_per_worker=1"])
    assert "this machine has 0" in str(e.value) and "to run on the CPU set actor.num_gpus_per_worker=0" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(["actor.num_gpus_per_worker=0.4", "rollout.num_gpus=0.4", "algo.kl_coef=0.1", "ref.num_gpus_per_worker=0.2"])
    assert "set actor.num_gpus_per_worker=0 ref.num_gpus_per_worker=0 rollout.num_gpus=0" in str(e.value)
    with pytest.raises(ConfigError, match=r"GPU 0 would hold 1.25 GPUs of work \(actor.num_gpus_per_worker=0.5 \+ "
                                          r"ref.num_gpus_per_worker=0.25 \+ rollout.num_gpus=0.5\)"):
        load_config(["actor.num_gpus_per_worker=0.5", "rollout.num_gpus=0.5", "algo.kl_coef=0.1", "ref.num_gpus_per_worker=0.25"])
    monkeypatch.setattr("rlhf.config.checks._gpu_count", lambda: 1)
    with pytest.raises(ConfigError, match="but this machine has 1; lower the world sizes"):
        load_config(["actor.num_gpus_per_worker=1"])


def test_a_reward_function_given_without_its_file_is_found_in_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "scoring.py").write_text("def numeric_answer(prompt, response, ground_truth, **extra):\n    return 0.0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"lib/scoring.py defines numeric_answer: give it with its file, "
                                          r"reward.fn=lib/scoring.py:numeric_answer"):
        load_config(["reward.fn=numeric_answer"])
    assert load_config(["reward.fn=lib/scoring.py:numeric_answer"]).reward.fn == "lib/scoring.py:numeric_answer"


def test_reward_fns_items_default_weight_and_kwargs_but_need_a_name():
    cfg = load_config(["reward.fn=null",
                       "reward.fns=[{name: math_answer}, {name: length_penalty, weight: 0.5, kwargs: {max_chars: 400}}]"])
    assert cfg.reward.specs() == [("math_answer", 1.0, {}), ("length_penalty", 0.5, {"max_chars": 400})]
    with pytest.raises(ConfigError, match=r"reward.fns\[0\] is missing name"):
        load_config(["reward.fn=null", "reward.fns=[{weight: 2.0}]"])
