"""Parallel layouts of both engines (2 gloo ranks on CPU) against a plain HF model trained by a
loop written here: data parallel (FSDP2) and tensor parallel must both be the same model."""

import pytest
import ray
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from engines import ENGINES
from engines.base import EngineConfig, OptimConfig
from rlhf.algos.losses import SFTLoss
from core.batch import pack
from rlhf.orchestration.worker_group import TrainerGroup

pytestmark = pytest.mark.e2e

# AdamW turns gradients of any size into steps of ~lr, so where a gradient is ~0 (k_proj.bias has an
# exact gradient of 0: softmax ignores a shift shared by all keys) rounding noise moves a weight by
# up to ~lr per step in any implementation. At lr 5e-4 that noise stays under the 1e-5 tolerance
# while every weight moves by ~1e-3.
LR, STEPS = 5e-4, 5


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    ray.init(address=ray_cluster)
    yield
    ray.shutdown()


def _batches(tiny_model, task):
    _, (train, _) = task
    tok = AutoTokenizer.from_pretrained(tiny_model)
    out = []
    for s in range(STEPS):
        probs = train[8 * s: 8 * s + 8]
        out.append(pack([tok(p.prompt).input_ids for p in probs],
                        [tok(p.answer).input_ids + [tok.eos_token_id] for p in probs], tok.eos_token_id))
    return out


def _hf_logprobs(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0))


@pytest.fixture(scope="module")
def plain_hf(tiny_model, task):
    """The reference: one process, plain HF model, AdamW, the SFT loss written out."""
    batches = _batches(tiny_model, task)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    first = _hf_logprobs(model, batches[0])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses, norms = [], []
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        loss = -(lp * batch["response_mask"][:, 1:]).sum() / batch["response_mask"].sum()
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        losses.append(float(loss))
    return batches, first, losses, norms, {k: v.detach() for k, v in model.state_dict().items()}


# The fsdp engine at dp=2 is checked against the Automodel engine and HF in tests/test_fsdp_engine.py.
@pytest.mark.parametrize("engine,tp,packing", [("automodel", 1, False), ("automodel", 2, False), ("automodel", 1, True),
                                               ("fsdp", 2, False)],
                         ids=["dp2", "tp2", "dp2-packed", "fsdp-tp2"])
def test_layout_matches_plain_hf(ray_local, tiny_model, plain_hf, engine, tp, packing, tmp_path):
    """dp2-packed: packed rows in micro-batches of a token budget small enough that the two ranks
    plan different numbers of them (they must agree on one)."""
    batches, first, losses, norms, weights = plain_hf
    cfg = EngineConfig(dtype="float32", micro_batch_size=4, max_grad_norm=1.0, seed=0, trust_remote_code=False,
                       tp_size=tp, ep_size=1, packing=packing, max_tokens_per_micro_batch=17 if packing else None)
    group = TrainerGroup(2, ENGINES[engine], tiny_model, cfg, trainable=True, num_cpus=1, num_gpus=0,
                         name=f"layout-{engine}-tp{tp}{'-packed' if packing else ''}")
    try:
        assert group.dp_size == 2 // tp
        ours = torch.cat(group.dp("logprobs", batches[0]))
        mask = batches[0]["attention_mask"].bool()
        assert (ours - first)[mask].abs().max() < 1e-5
        group.all("configure_optimizer", OptimConfig(LR, 0.0, (0.9, 0.999), 0, STEPS, "constant"))
        got = [group.dp("train_step", b, SFTLoss(), float(b["response_mask"].sum()))[0] for b in batches]
        group.all("save", str(tmp_path / "ckpt"))
    finally:
        group.shutdown()
    for m, loss, norm in zip(got, losses, norms):
        assert abs(m["loss"] - loss) < 1e-5 and abs(m["actor/grad_norm"] - norm) < 1e-4 * max(1.0, norm)
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    worst = {k: float((saved[k] - weights[k]).abs().max()) for k in saved}
    print(f"{engine} tp={tp} packing={packing}: max |weight - plain HF| after {STEPS} AdamW steps {max(worst.values()):.2e}; "
          f"max |loss diff| {max(abs(m['loss'] - x) for m, x in zip(got, losses)):.2e}")
    assert max(worst.values()) < 1e-5, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    # the steps moved every kind of weight, norms included
    start = load_file(f"{tiny_model}/model.safetensors")
    assert all(float((saved[k] - start[k]).abs().max()) > 1e-4 for k in saved)
