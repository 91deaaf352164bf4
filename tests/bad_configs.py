"""Bad configurations and what their error must name: shared by tests/test_config.py and
benchmarks/config_errors.py (which times each and writes docs/config-errors.md).

Each case: (overrides, words the error must contain). `{tmp}` in an override is a folder that
`make_fixtures` fills with broken model folders and a data file.
"""

import json
from pathlib import Path

CASES = [
    # unknown keys and bad override syntax
    (["trainer.outptu_dir=x"], ["trainer.outptu_dir", "trainer.output_dir"]),
    (["rl.stepz=3"], ["rl.stepz", "rl.steps"]),
    (["+new.key=1"], ["+new.key", "not supported"]),
    (["rl.steps"], ["key=value"]),
    # unknown choices
    (["algo=grpoo"], ["grpoo", "grpo"]),
    (["actor.engine=automodl"], ["automodl", "automodel"]),
    (["actor.engine=fsdp", "actor.ep_size=2"], ["actor.ep_size", "actor.engine=automodel"]),
    (["actor.dtype=fp16"], ["actor.dtype", "float16"]),
    (["actor.lora.rank=-1"], ["actor.lora.rank", "0 (off"]),
    (["actor.lora.rank=8", "actor.engine=fsdp"], ["actor.lora.rank=8", "actor.engine=automodel"]),
    (["actor.lora.rank=8", "actor.lora.target_modules=[]"], ["actor.lora", "target_modules"]),
    (["actor.lora.rank=8", "actor.tp_size=2"], ["actor.tp_size=2", "data parallelism only"]),
    (["actor.lora.rank=8"], ["model.path=null", "random", "checkpoints/sft stages=[rl]"]),
    (["algo.loss_agg=token_mean"], ["algo.loss_agg", "token-mean"]),
    (["algo.adv_estimator=gea"], ["algo.adv_estimator", "gae"]),
    (["algo.rollout_correction=tiss"], ["algo.rollout_correction", "tis"]),
    (["reward.on_error=ignore"], ["reward.on_error", "fallback"]),
    (["reward.fn=exact_mach"], ["exact_mach", "exact_match"]),
    (["reward.fn=no_such_module_xyz:f"], ["no_such_module_xyz"]),
    # wrong types
    (["rl.steps=many"], ["rl.steps", "integer"]),
    (["actor.world_size=1.5"], ["actor.world_size", "integer"]),
    (["algo.norm_by_std=maybe"], ["algo.norm_by_std", "true or false"]),
    (["actor.betas=0.9"], ["actor.betas", "list"]),
    (["rl.lr=fast"], ["rl.lr", "number"]),
    # out-of-range values
    (["rl.lr=0"], ["rl.lr", "> 0"]),
    (["rl.temperature=0"], ["rl.temperature", "> 0"]),
    (["algo.clip_low=1.5"], ["algo.clip_low", "(0, 1)"]),
    (["algo.gamma=1.5"], ["algo.gamma", "[0, 1]"]),
    (["algo.kl_coef=-0.1"], ["algo.kl_coef", ">= 0"]),
    (["algo.dual_clip=0.5"], ["algo.dual_clip", "> 1"]),
    (["algo.log_ratio_clamp=0"], ["algo.log_ratio_clamp", "> 0"]),
    (["algo.tis_cap=0.5"], ["algo.tis_cap", ">= 1"]),
    (["algo.mis_low=2.0"], ["algo.mis_low", "(0, 1]", "algo.mis_low=0.5"]),
    (["actor.betas=[0.9,1.5]"], ["actor.betas", "[0, 1)"]),
    (["actor.max_grad_norm=0"], ["actor.max_grad_norm", "> 0"]),
    (["rollout.gpu_memory_utilization=1.5"], ["rollout.gpu_memory_utilization", "(0, 1]"]),
    (["rollout.max_model_len=6"], ["rollout.max_model_len", "rl.max_new_tokens"]),
    (["rollout.max_num_batched_tokens=32"], ["rollout.max_num_batched_tokens=32", "rollout.max_model_len=64"]),
    (["task.ops=*"], ["task.ops", "+-"]),
    (["task.demo_carry_error=1.5"], ["task.demo_carry_error", "[0, 1]"]),
    (["reward.max_error_rate=1.5"], ["reward.max_error_rate", "[0, 1]"]),
    (["trainer.max_consecutive_skips=-1"], ["trainer.max_consecutive_skips", ">= 0"]),
    (["sft.epochs=-1"], ["sft.epochs", "> 0 or null"]),
    (["sft.eval_fraction=1.0"], ["sft.eval_fraction", "[0, 1)"]),
    (["sft.eval_fraction=-0.1"], ["sft.eval_fraction", "[0, 1)"]),
    (["sft.eval_every=10"], ["sft.eval_every=10", "sft.eval_fraction"]),
    (["rollout.generate_timeout_s=0"], ["rollout.generate_timeout_s", "> 0 or null"]),
    (["rollout.max_restarts=-1"], ["rollout.max_restarts", ">= 0"]),
    (["actor.world_size=0"], ["actor.world_size", "at least 1"]),
    (["algo.overlong_buffer=6"], ["algo.overlong_buffer", "rl.max_new_tokens"]),
    # parallel sizes that do not divide the world size or the model's heads, or exceed the GPUs
    (["actor.tp_size=3"], ["actor.world_size=2", "actor.tp_size=3", "multiple of tp_size"]),
    (["actor.ep_size=3"], ["actor.world_size=2", "actor.ep_size=3", "multiple of ep_size"]),
    (["actor.world_size=64", "actor.num_gpus_per_worker=1"], ["needs 64 GPUs", "actor ranks on GPUs 0-63", "this machine has"]),
    (["rollout.tensor_parallel_size=64", "rollout.num_gpus=1"], ["needs 64 GPUs", "vLLM on GPUs 0-63", "this machine has"]),
    (["rl.off_policy_steps=-1"], ["rl.off_policy_steps", "0 (on-policy) or more"]),
    (["rl.partial_rollouts=true"], ["rl.partial_rollouts=true", "rl.off_policy_steps=0"]),
    (["rl.off_policy_steps=2", "algo.dynamic_sampling=true"], ["rl.off_policy_steps=2", "algo.dynamic_sampling=false"]),
    (["rl.off_policy_steps=1", "rl.partial_rollouts=true", "algo.dynamic_sampling=true"],
     ["rl.partial_rollouts=true", "algo.dynamic_sampling=false"]),
    (["task.name=arithmetic_tools", "rl.off_policy_steps=1", "algo.dynamic_sampling=true"],
     ["agent.env=", "multi-turn batches", "algo.dynamic_sampling=false"]),
    (["algo.decoupled_cap=1"], ["algo.decoupled_cap"]),
    (["rl.off_policy_steps=1", "rollout.sleep=true"], ["rl.off_policy_steps=1", "rollout.sleep=false"]),
    (["rollout.tensor_parallel_size=3"], ["rollout.tensor_parallel_size=3", "4 attention heads", "2 key-value heads"]),
    (["model.path={tmp}/three_heads", "rollout.tensor_parallel_size=2"], ["rollout.tensor_parallel_size=2", "3 attention heads"]),
    (["actor.engine=fsdp", "actor.world_size=4", "actor.tp_size=4"], ["actor.tp_size=4", "2 key-value heads", "divides both"]),
    # batch divisibility
    (["sft.batch_size=3"], ["sft.batch_size", "actor.world_size"]),
    (["algo=ppo", "algo.mini_batches=3"], ["algo.mini_batches=3"]),
    (["rl.prompts_per_step=3", "rl.n=3"], ["rl.prompts_per_step", "actor.world_size"]),
    # algorithms that need more than one sample per prompt, or a critic
    (["algo=dr_grpo", "rl.n=1"], ["algo.adv_estimator=grpo", "rl.n >= 2"]),
    (["algo=rloo", "rl.n=1"], ["algo.adv_estimator=rloo", "rl.n >= 2"]),
    (["algo=reinforce_pp_baseline", "rl.n=1"], ["reinforce_pp_baseline", "rl.n >= 2"]),
    (["algo.critic_pretrain_steps=2"], ["algo.critic_pretrain_steps", "gae"]),
    (["algo=ppo", "rl.steps=10"], ["algo.critic_pretrain_steps", "rl.steps=10"]),
    (["algo.kl_mode=reward", "algo.kl_coef=0.1"], ["algo.kl_mode=reward", "reinforce_pp"]),
    # missing or unsafe files
    (["model.path=/nonexistent/model"], ["model.path", "config.json"]),
    (["model.path={tmp}/pickled"], ["safetensors", "pytorch_model.bin"]),
    (["model.path={tmp}/no_tokenizer"], ["no tokenizer", "save_pretrained"]),
    (["model.path={tmp}/remote_code"], ["auto_map", "model.trust_remote_code=true"]),
    (["data.train_files=[/nonexistent/train.jsonl]"], ["data.train_files", "/nonexistent/train.jsonl does not exist"]),
    (["data.train_files=[{tmp}/data/train.jsonl]", "data.eval_files=[/nonexistent/test.jsonl]"],
     ["data.eval_files", "/nonexistent/test.jsonl does not exist"]),
    (["data.train_files=[{tmp}/hub]"], ["data.train_files", "save_to_disk", "hub/main/train-*.parquet"]),
    (["data.train_files=[{tmp}/hub/main/validation-*.parquet]"], ["data.train_files", "validation-*.parquet matches no file"]),
    (["data.train_files=[{tmp}/data/train.jsonl]", "data.prompt_key=problme"],
     ["data.train_files", "no column 'problme' (data.prompt_key)", "Did you mean data.prompt_key=prompt?"]),
    (["trainer.resume=/nonexistent/state-rl-step3"], ["trainer.resume", "driver.json"]),
    (["reward.fn=/nonexistent/rewards.py:score"], ["/nonexistent/rewards.py"]),
    (["reward.fns=[{name: arithmetic, weight: 1.0, kwargs: {}}]"], ["reward.fn", "reward.fns"]),
    # found by hand after the first 78: each started training, named a value derived from the
    # keys the user set, lumped several conditions into one message, or gave no fix
    (["data.train_files=[{tmp}/data/sft.jsonl]", "data.response_key=respones"],
     ["stage sft", "data.response_key='respones'", "Did you mean data.response_key=response?"]),
    (["data.train_files=[{tmp}/data/train.jsonl]", "data.answer_key=null"],
     ["reward.fn=arithmetic", "data.answer_key=null", "set data.answer_key"]),
    (["sft.steps=0", "rl.steps=0"], ["sft.steps=0, rl.steps=0", "nothing would run", "rl.steps=20"]),
    (["algo.kl_target=0.1"], ["algo.kl_target=0.1", "algo.kl_coef=0", "algo.kl_coef (e.g. 0.05)"]),
    (["algo=reinforce_pp", "rl.n=1", "algo.dynamic_sampling=true"], ["algo.dynamic_sampling=true", "rl.n=1", "rl.n=8"]),
    (["task.max_operand=3"], ["task.num_eval=256", "16 problems", "below 8", "raise task.max_operand"]),
    (["task.num_eval=2000"], ["task.num_eval=2000", "2500 problems", "below 1250"]),
    (["rollout.max_model_len=128", "model.arch.max_position_embeddings=64"], ["rollout.max_model_len=128", "64 positions", "model.arch.max_position_embeddings"]),
    (["model.arch.num_key_value_heads=3"], ["model.arch.num_key_value_heads=3", "num_attention_heads=4", "1, 2, 4"]),
    (["model.arch.hidden_size=0"], ["model.arch.hidden_size", "positive integer"]),
    (["trainer.num_cpus=1"], ["trainer.num_cpus=1", "wait for a CPU forever", "trainer.num_cpus=3"]),
    (["trainer.output_dir="], ["trainer.output_dir is empty", "trainer.output_dir=outputs/run1"]),
    (["trainer.loggers=[console,console]"], ["console more than once", "trainer.loggers=[console]"]),
    (["rollout.max_num_batched_tokens=8", "rollout.max_num_seqs=16"],
     ["rollout.max_num_batched_tokens=8", "rollout.max_num_seqs=16", "to 16 or more"]),
    (["rl.max_new_tokens=100"], ["rl.max_new_tokens=100", "rollout.max_model_len=64", "above 100"]),
    (["eval.max_new_tokens=100"], ["eval.max_new_tokens=100", "rollout.max_model_len=64", "above 100"]),
    (["data.max_prompt_tokens=0"], ["data.max_prompt_tokens must be at least 1", "got 0"]),
    (["rl.top_p=0"], ["rl.top_p must be in (0, 1]", "got 0.0"]),
    (["rl.top_k=-1"], ["rl.top_k must be 0 (off) or more", "got -1"]),
    (["eval.pass_temperature=0"], ["eval.pass_temperature must be > 0", "eval.pass_temperature=1.0"]),
    (["reward.timeout_s=0"], ["reward.timeout_s must be > 0", "got 0"]),
    (["reward.num_workers=0"], ["reward.num_workers must be at least 1", "got 0"]),
    (["actor.lora.rank=8", "actor.lora.alpha=0", "stages=[rl]"], ["actor.lora.alpha must be > 0", "actor.lora.alpha=16"]),
    (["actor.num_cpus_per_worker=-1"], ["actor.num_cpus_per_worker must be 0 or more", "got -1"]),
    (["rollout.weight_transport=nccl"], ["rollout.weight_transport=nccl", "actor.num_gpus_per_worker=0", "rollout.weight_transport=auto"]),
    (["rollout.sleep=true"], ["rollout.sleep=true", "rollout.num_gpus=0", "rollout.sleep=false"]),
    (["reward.fn=format_match"], ["reward.fn='format_match'", "'pattern'", "reward.fns=[{name: format_match"]),
    (["reward.fn=null", "reward.fns=[{name: math_answer, weight: 0, kwargs: {}}]"], ["every reward.fns weight is 0"]),
    (["reward.fn=numeric_answer"], ["'numeric_answer'", "math_answer", "reward.fn=path/to/file.py:numeric_answer"]),
    (["reward.fn={tmp}/rewards/mine.py:numeric_anser"], ["no callable 'numeric_anser'", "mine.py:numeric_answer?"]),
    (["reward.fn={tmp}/rewards/mine.py"], ["names a file but not the function", "mine.py:<function>"]),
    (["reward.fn={tmp}/rewards/mine.py:two_args"], ["two_args", "cannot be called", "(prompt, response, ground_truth, **extra)"]),
    (["reward.fn={tmp}/rewards/broken.py:score"], ["broken.py raised NameError", "fix that file"]),
]


def make_fixtures(tmp: Path) -> None:
    """Model folders that are broken in one way each, data files that are fine, a dataset
    downloaded from the Hub (its files, not a save_to_disk folder) and reward files."""
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    for name, files in {
        "three_heads": {"config.json": {**config, "num_attention_heads": 3, "num_key_value_heads": 3},
                        "tokenizer.json": {}, "model.safetensors": None},
        "data": {"train.jsonl": {"prompt": "1+1=", "answer": "2"}, "sft.jsonl": {"prompt": "1+1=", "answer": "2", "response": "2"}},
        "rewards": {"mine.py": "def numeric_answer(prompt, response, ground_truth, **extra):\n    return 0.0\n\n\n"
                               "def two_args(response, ground_truth):\n    return 0.0\n",
                    "broken.py": "def score(prompt, response, ground_truth, **extra):\n    return 0.0\n\n\nscroe(1)\n"},
        "hub": {"README.md": None, "main/train-00000-of-00002.parquet": None, "main/train-00001-of-00002.parquet": None},
        "pickled": {"config.json": config, "tokenizer.json": {}, "pytorch_model.bin": None},
        "no_tokenizer": {"config.json": config, "model.safetensors": None},
        "remote_code": {"config.json": {**config, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}},
                        "tokenizer.json": {}, "model.safetensors": None},
    }.items():
        folder = tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        for file, content in files.items():
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            (folder / file).write_text(content if isinstance(content, str) else json.dumps(content) if content is not None else "")


def resolve(overrides: list[str], tmp: Path) -> list[str]:
    return [o.replace("{tmp}", str(tmp)) for o in overrides]
