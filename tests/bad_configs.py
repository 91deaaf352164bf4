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
    (["algo.mis_low=2.0"], ["algo.mis_low", "mis_high"]),
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
    (["rl.off_policy_steps=2"], ["rl.off_policy_steps", "0 (on-policy) or 1"]),
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
    (["trainer.resume=/nonexistent/state-rl-step3"], ["trainer.resume", "driver.json"]),
    (["reward.fn=/nonexistent/rewards.py:score"], ["/nonexistent/rewards.py"]),
    (["reward.fns=[{name: arithmetic, weight: 1.0, kwargs: {}}]"], ["reward.fn", "reward.fns"]),
]


def make_fixtures(tmp: Path) -> None:
    """Model folders that are broken in one way each, a data file that is fine, and a dataset
    downloaded from the Hub (its files, not a save_to_disk folder)."""
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    for name, files in {
        "three_heads": {"config.json": {**config, "num_attention_heads": 3, "num_key_value_heads": 3},
                        "tokenizer.json": {}, "model.safetensors": None},
        "data": {"train.jsonl": {"prompt": "1+1=", "answer": "2"}},
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
            (folder / file).write_text(json.dumps(content) if content is not None else "")


def resolve(overrides: list[str], tmp: Path) -> list[str]:
    return [o.replace("{tmp}", str(tmp)) for o in overrides]
