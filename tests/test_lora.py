"""LoRA on the Automodel engine (NeMo Automodel's adapters), checked against a LoRA written
plainly here: merged weights W + alpha/rank * B @ A through `functional_call`, torch's AdamW. (LoRA through the product: tests/test_reward_plugins_e2e.py.)"""

import pytest
import ray
import torch
from safetensors.torch import load_file
from torch.func import functional_call
from transformers import AutoModelForCausalLM

from engines import ENGINES
from rlhf.orchestration.workers import load_object
from engines.base import EngineConfig, LoraConfig, OptimConfig
from rlhf.algos.losses import SFTLoss
from rlhf.orchestration.worker_group import TrainerGroup
from sft_batches import sft_batches

RANK, ALPHA, LR, STEPS = 4, 8.0, 3e-2, 3
LORA = LoraConfig(rank=RANK, alpha=ALPHA, target_modules=("*_proj",))
CFG = EngineConfig(dtype="float32", micro_batch_size=4, max_grad_norm=1.0, seed=0, trust_remote_code=False, lora=LORA)
OPTIM = OptimConfig(LR, 0.0, (0.9, 0.999), 0, STEPS, "constant")


def _hf_logprobs(model, batch, weights=None):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logits = (functional_call(model, weights, args=(), kwargs=inputs) if weights else model(**inputs)).logits
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)


def _reference(tiny_model, start, batches):
    """SFT steps of plain LoRA from the adapters `start` ({layer: (A, B)}): the merged weights
    after them by layer name, the base weights, and each step's loss and gradient norm."""
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).requires_grad_(False)
    base = dict(hf.named_parameters())
    ab = {name: (a.clone().requires_grad_(), b.clone().requires_grad_()) for name, (a, b) in start.items()}
    params = [p for pair in ab.values() for p in pair]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=0.0)

    def merged():
        return {f"{n}.weight": base[f"{n}.weight"] + ALPHA / RANK * b @ a for n, (a, b) in ab.items()}

    curve = []
    for batch in batches:
        mask = batch["response_mask"][:, 1:]
        loss = -(_hf_logprobs(hf, batch, merged()) * mask).sum() / mask.sum()
        loss.backward()
        curve.append((loss.item(), torch.nn.utils.clip_grad_norm_(params, 1.0).item()))
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        return {k: v.detach() for k, v in merged().items()}, base, curve


def _train(engine_call, batches):
    engine_call("configure_optimizer", OPTIM)
    return [engine_call("train_step", b, SFTLoss(), float(b["response_mask"].sum())) for b in batches]


@pytest.mark.parametrize("recompute", [False, True], ids=["plain", "recompute"])
def test_lora_trains_like_a_plain_lora_and_exports_merged_weights(tiny_model, task, one_rank_world, recompute):
    batches = sft_batches(tiny_model, task, STEPS)
    cfg = EngineConfig(**{**CFG.__dict__, "lora": LoraConfig(**{**LORA.__dict__, "recompute": recompute})})
    engine = load_object(ENGINES["automodel"])(tiny_model, cfg, trainable=True)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    projections = {n: m for n, m in hf.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith("_proj")}
    adapters = engine._adapters()
    assert sorted(adapters) == sorted(projections) and projections
    counts = engine.parameter_counts()
    assert counts["trainable"] == sum(RANK * (m.in_features + m.out_features) for m in projections.values())
    assert counts["total"] == sum(p.numel() for p in hf.parameters()) + counts["trainable"]

    # B starts at zero: the adapted model is the base model.
    mask = batches[0]["attention_mask"][:, 1:].bool()
    with torch.no_grad():
        want = _hf_logprobs(hf, batches[0])
    assert (engine.logprobs(batches[0])[:, 1:] - want)[mask].abs().max() < 1e-5

    start = {n: (m.lora_A.weight.detach().cpu().clone(), m.lora_B.weight.detach().cpu().clone())
             for n, m in adapters.items()}
    assert all(b.abs().max() == 0 and a.abs().max() > 0 for a, b in start.values())
    metrics = _train(lambda name, *a: getattr(engine, name)(*a), batches)
    assert all(m["actor/skipped_step"] == 0 for m in metrics)

    want_weights, base, curve = _reference(tiny_model, start, batches)
    for got, (loss, norm) in zip(metrics, curve):
        assert got["loss"] == pytest.approx(loss, rel=1e-6) and got["actor/grad_norm"] == pytest.approx(norm, rel=1e-5)
    exported = {k: v.cpu() for k, v in engine.export_weights()}
    assert not any("lora_" in name for name in exported)
    gap = max((exported[k] - v).abs().max().item() for k, v in want_weights.items())
    moved = max((exported[k] - base[k]).abs().max().item() for k in want_weights)
    print(f"LoRA rank {RANK}, {STEPS} steps: max |engine - plain LoRA| merged weight {gap:.2e} (moved {moved:.2e})")
    # AdamW divides each gradient element by its own running size, so float32 rounding in an
    # element near zero moves it by up to the LR: the weights agree to a share of how far they moved.
    assert gap < 1e-3 * moved and moved > 1e-2
    for name, tensor in hf.state_dict().items():  # everything else is frozen
        if name not in want_weights:
            assert torch.equal(exported[name], tensor), name

    # The merged export is the model the engine computes with (through its adapters).
    merged = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    merged.load_state_dict(exported, strict=False)
    with torch.no_grad():
        again = _hf_logprobs(merged, batches[0])
    assert (engine.logprobs(batches[0])[:, 1:] - again)[mask].abs().max() < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_second_stage_trains_like_a_run_restarted_from_the_first_stages_checkpoint(tiny_model, task, one_rank_world,
                                                                                    tmp_path, dtype):
    """The stage hand-off: the engine that trained stage 1 goes on to stage 2 (configure_optimizer)
    exactly as a fresh engine built from stage 1's merged checkpoint would."""
    batches = sft_batches(tiny_model, task, 4)
    cfg = EngineConfig(**{**CFG.__dict__, "dtype": dtype})
    first = load_object(ENGINES["automodel"])(tiny_model, cfg, trainable=True)
    call = lambda name, *a: getattr(first, name)(*a)  # noqa: E731
    _train(call, batches[:2])
    first.save(str(tmp_path / "stage1"))
    go_on = _train(call, batches[2:])
    fresh = load_object(ENGINES["automodel"])(str(tmp_path / "stage1"), cfg, trainable=True)
    again = _train(lambda name, *a: getattr(fresh, name)(*a), batches[2:])
    for x, y in zip(go_on, again):
        assert (x["loss"], x["actor/grad_norm"]) == (y["loss"], y["actor/grad_norm"])
    want = dict(fresh.export_weights())
    assert all(torch.equal(t, want[k]) for k, t in first.export_weights())

    # The reference of stage 2 (adapters off) is stage 1's checkpoint, as a frozen engine loads it,
    # while the policy has moved on.
    frozen = load_object(ENGINES["automodel"])(str(tmp_path / "stage1"), EngineConfig(**{**cfg.__dict__, "lora": None}),
                                               trainable=False)
    reference = frozen.logprobs(batches[0])
    mask = batches[0]["attention_mask"].bool()
    assert (first.base_logprobs(batches[0]) - reference)[mask].abs().max() < (1e-6 if dtype == "float32" else 1e-2)
    assert (first.logprobs(batches[0]) - reference)[mask].abs().max() > 1e-2


def test_adapters_the_merged_export_cannot_serve_are_refused(tiny_model, one_rank_world):
    cfg = EngineConfig(**{**CFG.__dict__, "lora": LoraConfig(4, 8.0, ("*_proj", "lm_head"))})
    with pytest.raises(ValueError, match=r"\['lm_head'\], whose weight is the input embedding"):
        load_object(ENGINES["automodel"])(tiny_model, cfg, trainable=True)


def test_lora_names_the_layers_when_no_pattern_matches(tiny_model, one_rank_world):
    cfg = EngineConfig(dtype="float32", micro_batch_size=4, max_grad_norm=1.0, seed=0, trust_remote_code=False,
                       lora=LoraConfig(rank=4, alpha=8.0, target_modules=("*.qkv",)))
    with pytest.raises(ValueError, match=r"'\*.qkv' matches no linear layer.*'q_proj'"):
        load_object(ENGINES["automodel"])(tiny_model, cfg, trainable=True)


@pytest.mark.e2e
def test_lora_at_dp2_matches_the_plain_lora(tiny_model, task, tmp_path, one_rank_world, ray_cluster):
    batches = sft_batches(tiny_model, task, STEPS)
    ray.init(address=ray_cluster)
    try:
        group = TrainerGroup(2, ENGINES["automodel"], tiny_model, CFG, True, 1, 0, "lora-dp2", "lm")
        try:
            assert group.dp_size == 2
            group.all("configure_optimizer", OPTIM)
            first = []
            for i, b in enumerate(batches):
                if i == 1:
                    group.all("save_state", str(tmp_path / "state"))
                first.append(group.dp("train_step", b, SFTLoss(), float(b["response_mask"].sum()))[0])
            group.all("save", str(tmp_path / "hf"))
            # Resumed from the state saved after step 1 (adapters, their AdamW moments, the schedule),
            # steps 2-3 are the ones first taken.
            group.all("load_state", str(tmp_path / "state"))
            again = [group.dp("train_step", b, SFTLoss(), float(b["response_mask"].sum()))[0] for b in batches[1:]]
            group.all("save", str(tmp_path / "hf-resumed"))
            # A new stage folds the adapters into the sharded base weights at its first step.
            group.all("configure_optimizer", OPTIM)
            next_step = group.dp("train_step", batches[0], SFTLoss(), float(batches[0]["response_mask"].sum()))[0]
            group.all("save", str(tmp_path / "hf-next-stage"))
        finally:
            group.shutdown()
    finally:
        ray.shutdown()
    # The same adapters start on every rank and at every world size (seeded by the run's seed).
    one = load_object(ENGINES["automodel"])(tiny_model, EngineConfig(**{**CFG.__dict__, "micro_batch_size": 8}), trainable=True)
    start = {n: (m.lora_A.weight.detach().clone(), m.lora_B.weight.detach().clone()) for n, m in one._adapters().items()}
    want, base, _ = _reference(tiny_model, start, batches)
    saved = load_file(str(tmp_path / "hf" / "model.safetensors"))
    gap = max((saved[k] - v).abs().max().item() for k, v in want.items())
    moved = max((saved[k] - base[k]).abs().max().item() for k in want)
    print(f"LoRA at dp=2, {STEPS} steps: max |engine - plain LoRA| merged weight {gap:.2e} (moved {moved:.2e})")
    assert gap < 1e-3 * moved and moved > 1e-2
    for x, y in zip(first[1:], again):
        assert (x["loss"], x["actor/grad_norm"]) == (y["loss"], y["actor/grad_norm"])
    resumed = load_file(str(tmp_path / "hf-resumed" / "model.safetensors"))
    assert all(torch.equal(resumed[k], saved[k]) for k in saved)
    # ... as one rank restarted from the merged checkpoint takes it
    fresh = load_object(ENGINES["automodel"])(str(tmp_path / "hf"), EngineConfig(**{**CFG.__dict__, "micro_batch_size": 8}),
                                              trainable=True)
    fresh.configure_optimizer(OPTIM)
    want_step = fresh.train_step(batches[0], SFTLoss(), float(batches[0]["response_mask"].sum()))
    assert next_step["loss"] == pytest.approx(want_step["loss"], rel=1e-6)
    assert next_step["actor/grad_norm"] == pytest.approx(want_step["actor/grad_norm"], rel=1e-5)
    next_stage = load_file(str(tmp_path / "hf-next-stage" / "model.safetensors"))
    moved = max((next_stage[k] - saved[k]).abs().max().item() for k in want)
    gap = max((t.cpu() - next_stage[k]).abs().max().item() for k, t in fresh.export_weights() if k in next_stage)
    assert gap < 1e-3 * moved and moved > 1e-3
