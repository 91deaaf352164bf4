"""The plain-FSDP2 engine against the Automodel engine and against references written here: its
LR schedule (a closed form and Automodel's own scheduler), 20 SFT steps at dp=2 on both engines
(2 gloo ranks each), exact resume of its saved state, a value head on both engines, and the
whole job (PPO: actor, reference and critic all on this engine) with a resumed run.
Tensor parallel against a plain HF AdamW loop is in tests/test_parallel.py (both engines)."""

import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from engines import ENGINES
from engines.base import EngineConfig, OptimConfig
from rlhf.algos.losses import SFTLoss, ValueLoss
from rlhf.output.metrics import read_metrics, rl_steps
from rlhf.orchestration.worker_group import TrainerGroup
from sft_batches import sft_batches

ENGINE_NAMES = ("automodel", "fsdp")
CFG = EngineConfig(dtype="float32", micro_batch_size=4, max_grad_norm=1.0, seed=0, trust_remote_code=False)


def _closed_form_lr(step, lr, warmup, total, schedule):
    """Warmup from 0, then constant, or decay to 0.1 * lr at `total` (written out, not imported)."""
    if warmup and step <= warmup:
        return lr * step / warmup
    if schedule == "constant":
        return lr
    t = min(1.0, (step - warmup) / (total - warmup))
    shape = 1 - t if schedule == "linear" else (1 + math.cos(math.pi * t)) / 2
    return 0.1 * lr + 0.9 * lr * shape


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 4])
def test_lr_schedule_matches_automodel(schedule, warmup):
    from nemo_automodel.components.optim.scheduler import OptimizerParamScheduler

    from engines.fsdp.engine import build_optimizer

    lr, total = 3e-4, 12
    cfg = OptimConfig(lr, 0.01, (0.9, 0.999), warmup, total, schedule)
    opt, sched = build_optimizer(torch.nn.Linear(2, 2), cfg)
    ref_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr)
    ref = OptimizerParamScheduler(ref_opt, init_lr=0.0 if warmup else lr, max_lr=lr,
                                  min_lr=lr if schedule == "constant" else 0.1 * lr, lr_warmup_steps=warmup,
                                  lr_decay_steps=total, lr_decay_style=schedule, start_wd=0.01, end_wd=0.01,
                                  wd_incr_steps=total, wd_incr_style="constant")
    for step in range(total + 3):  # past the end of the decay too
        got = opt.param_groups[0]["lr"]
        want = _closed_form_lr(step, lr, warmup, total, schedule)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-18), step
        assert got == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-18), step
        opt.step()
        sched.step()
        ref.step(1)
    assert opt.param_groups[0]["weight_decay"] == 0.01


def test_expert_parallel_is_refused_naming_the_automodel_engine():
    from engines.fsdp.engine import FSDPEngine

    with pytest.raises(ValueError, match="actor.engine=automodel"):
        FSDPEngine("unused", EngineConfig("float32", 4, 1.0, 0, False, tp_size=1, ep_size=2), trainable=True)


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    ray.init(address=ray_cluster)
    yield
    ray.shutdown()


def _start(tiny_model, head, trainable=True):
    """One 2-rank group per engine, started side by side (start-up is most of the time)."""
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(TrainerGroup, 2, ENGINES[name], tiny_model, CFG, trainable, 1, 0,
                                     f"parity-{head}-{name}", head) for name in ENGINE_NAMES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.e2e
def test_sft_parity_and_resume_at_dp2(ray_local, tiny_model, task, tmp_path):
    steps, lr, warmup = 20, 1e-3, 4
    optim = OptimConfig(lr, 0.01, (0.9, 0.999), warmup, steps, "cosine")
    batches = sft_batches(tiny_model, task, steps)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        logits = hf(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"]).logits
    want = torch.log_softmax(logits[:, :-1], -1).gather(-1, batches[0]["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batches[0]["attention_mask"][:, 1:].bool()

    groups = _start(tiny_model, "lm")
    curves, resumed = {}, []
    try:
        for name, group in groups.items():
            assert group.dp_size == 2
            got = torch.cat(group.dp("logprobs", batches[0]))[:, 1:]
            assert (got - want)[mask].abs().max() < 1e-5, name
            group.all("configure_optimizer", optim)
            curves[name] = []
            for i, b in enumerate(batches):
                if name == "fsdp" and i == 10:
                    group.all("save_state", str(tmp_path / "state"))
                curves[name].append(group.dp("train_step", b, SFTLoss(), float(b["response_mask"].sum()))[0])
        fsdp = groups["fsdp"]
        fsdp.all("load_state", str(tmp_path / "state"))
        resumed = [fsdp.dp("train_step", b, SFTLoss(), float(b["response_mask"].sum()))[0] for b in batches[10:13]]
    finally:
        for group in groups.values():
            group.shutdown()

    a, f = curves["automodel"], curves["fsdp"]
    loss_gap = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, f))
    norm_gap = max(abs(x["actor/grad_norm"] - y["actor/grad_norm"]) / y["actor/grad_norm"] for x, y in zip(a, f))
    print(f"dp=2, {steps} SFT steps: max |loss automodel - fsdp| {loss_gap:.2e}, max relative grad-norm gap "
          f"{norm_gap:.2e}; loss {f[0]['loss']:.3f} -> {f[-1]['loss']:.3f}")
    assert loss_gap < 1e-4 and norm_gap < 1e-4
    assert f[-1]["loss"] < f[0]["loss"] - 0.5  # it learned: the parity is not of two idle engines
    for i, (x, y) in enumerate(zip(a, f)):  # the metric is the LR the step after this one uses
        assert x["actor/lr"] == pytest.approx(_closed_form_lr(i + 1, lr, warmup, steps, "cosine"), rel=1e-12)
        assert y["actor/lr"] == pytest.approx(x["actor/lr"], rel=1e-12)
    # Resumed from the state saved before step 11, steps 11-13 are the ones first taken.
    for first, again in zip(f[10:13], resumed):
        for key in ("loss", "actor/grad_norm", "actor/lr"):
            assert again[key] == pytest.approx(first[key], rel=1e-6, abs=1e-9), key


@pytest.mark.e2e
def test_value_head_trains_alike_on_both_engines(ray_local, tiny_model, task):
    batch = sft_batches(tiny_model, task, 1, size=8)[0]
    mask = batch["response_mask"]
    # A toy regression target: each response token's value is its position in the response / 4.
    batch["returns"] = (mask.cumsum(-1) * mask) / 4
    batch["values"] = torch.zeros_like(mask)
    optim = OptimConfig(2e-3, 0.0, (0.9, 0.999), 0, 3, "constant")

    groups = _start(tiny_model, "value")
    out = {}
    try:
        for name, group in groups.items():
            start = torch.cat(group.dp("values", batch))
            group.all("configure_optimizer", optim)
            losses = [group.dp("train_step", batch, ValueLoss(clip=None), float(mask.sum()))[0]["loss"]
                      for _ in range(3)]
            out[name] = start, losses, torch.cat(group.dp("values", batch))
    finally:
        for group in groups.values():
            group.shutdown()

    for name, (start, losses, end) in out.items():
        assert start.abs().max() == 0, name  # the head starts at zero on every rank
        assert end[mask.bool()].abs().min() > 1e-3, name  # every value moved
        assert losses[2] < losses[0], (name, losses)
    gap = (out["automodel"][2] - out["fsdp"][2])[batch["attention_mask"].bool()].abs().max()
    print(f"value head, 3 steps: losses automodel {out['automodel'][1]}, fsdp {out['fsdp'][1]}; max |dV| {gap:.2e}")
    assert gap < 1e-5


@pytest.mark.e2e
def test_default_job_on_the_fsdp_engine_with_two_rollout_engines(tiny_model, tmp_path):
    """The default job through the real entry point with the actor and the frozen reference on
    the fsdp engine; its resume state is saved through this engine (the engine-level resume is
    checked above). Two rollout engines beside the actor's two ranks and the reference's: the
    local cluster once had CPUs for one engine, so the second rank was never started and the
    first waited in its rendezvous for 600 s."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlhf.main", "actor.engine=fsdp", "rollout.num_engines=2",
                           "sft.steps=2", "rl.steps=2", "rl.prompts_per_step=8", "algo.kl_coef=0.05",
                           "trainer.save_every=2", "task.num_eval=16", f"trainer.output_dir={out}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "sft/loss" in r] == [1, 2]
    rl = rl_steps(rows)
    assert sorted(rl) == [1, 2]
    # the reference answered (2 SFT steps leave no reward signal, so the policy itself barely moves)
    assert all(math.isfinite(r["actor/kl_ref"]) and r["actor/skipped_step"] == 0 for r in rl.values())
    # both engines generated with the weights this engine pushed: the log-probs agree
    assert max(r["rollout/logprob_abs_diff_max"] for r in rl.values()) < 1e-4
    assert (out / "checkpoints" / "state-rl-step2" / "COMPLETE").is_file()
    # the saved policy is a plain HF model holding the trained weights
    saved = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "rl", dtype=torch.float32).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    assert saved.keys() == start.keys() and any(not torch.equal(saved[k], start[k]) for k in saved)


@pytest.mark.e2e
def test_qwen3_tensor_parallel_matches_plain_hf(ray_local, tmp_path):
    """Qwen3's per-head q/k norms under tp=2 (HF's "replicated_with_grad_allreduce"): each rank
    sees half the heads, so their gradients must be summed across ranks. 3 AdamW steps against
    a plain HF loop; the norms must move and match."""
    from tensordict import TensorDict
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                         max_position_embeddings=64, tie_word_embeddings=True))
    with torch.no_grad():  # norms away from 1, so a wrong norm gradient shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "qwen3")
    ids = torch.randint(1, 128, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 12)
    mask[:, 0] = 0
    batch = TensorDict({"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": mask,
                        "position_ids": torch.arange(12).expand(4, 12).clone()}, batch_size=[4])
    optim = OptimConfig(5e-4, 0.0, (0.9, 0.999), 0, 3, "constant")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    want = []
    for _ in range(3):
        lp = torch.log_softmax(model(input_ids=ids).logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = -lp.sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        want.append(float(loss))

    cfg = EngineConfig("float32", 4, 1.0, 0, False, tp_size=2, ep_size=1)
    group = TrainerGroup(2, ENGINES["fsdp"], str(tmp_path / "qwen3"), cfg, True, 1, 0, "qwen3-tp2")
    try:
        group.all("configure_optimizer", optim)
        got = [group.dp("train_step", batch, SFTLoss(), float(mask.sum()))[0]["loss"] for _ in range(3)]
        group.all("save", str(tmp_path / "trained"))
    finally:
        group.shutdown()
    saved = Qwen3ForCausalLM.from_pretrained(tmp_path / "trained", dtype=torch.float32).state_dict()
    start = Qwen3ForCausalLM.from_pretrained(tmp_path / "qwen3", dtype=torch.float32).state_dict()
    ref = model.state_dict()
    worst = {k: float((saved[k] - ref[k]).abs().max()) for k in ref}
    print(f"qwen3 tp=2: max |loss diff| {max(abs(a - b) for a, b in zip(got, want)):.2e}, max |weight diff| "
          f"{max(worst.values()):.2e}")
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5
    assert max(worst.values()) < 1e-5, sorted(worst.items(), key=lambda kv: -kv[1])[:3]
    for k in ("model.layers.0.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight"):
        assert float((saved[k] - start[k]).abs().max()) > 1e-4, k
