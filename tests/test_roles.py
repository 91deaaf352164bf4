"""The real roles under Ray: the Automodel trainer group (2 gloo ranks, FSDP2) and two vLLM
rollout engines fed by the object-store weight transport, checked against a plain Hugging Face
model in this process."""

import copy
import dataclasses
import time

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engines import ENGINES
from engines.base import EngineConfig, OptimConfig
from rlhf.algos.losses import SFTLoss
from core.batch import pack
from rlhf.orchestration.worker_group import TrainerGroup
from rlhf.orchestration.workers import ROLLOUT_ACTOR_OPTIONS, RolloutWorker
from rollout import ROLLOUT_ENGINES
from rollout.base import Sampling
from rollout.group import RolloutGroup
from rollout.vllm_engine import VLLMConfig
from weight_sync.buckets import pack_buckets

pytestmark = pytest.mark.e2e

LR = 1e-2


def hf_logprobs(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0))


@pytest.fixture(scope="module")
def roles(tiny_model, ray_cluster):
    ray.init(address=ray_cluster)
    try:
        engine_cfg = EngineConfig(dtype="float32", micro_batch_size=2, max_grad_norm=1.0, seed=0, trust_remote_code=False)
        actor = TrainerGroup(2, ENGINES["automodel"], tiny_model, engine_cfg, trainable=True,
                             num_cpus=1, num_gpus=0, name="test-actor")
        vllm_cfg = VLLMConfig("float32", 1, 64, 32 << 20, 0.5, 0, enforce_eager=None, max_num_seqs=None,
                              max_num_batched_tokens=None, weight_transport="object_store", trust_remote_code=False,
                              gpu_share=0.0, ray_bundles=())
        engines = [ray.remote(num_cpus=1, **ROLLOUT_ACTOR_OPTIONS)(RolloutWorker).remote(ROLLOUT_ENGINES["vllm"], tiny_model, vllm_cfg)
                   for _ in range(2)]
        # small buckets: several per push
        actor.all("connect_rollout", "object_store", engines, 1 << 16, "float32")
        yield actor, engines
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def stepped(roles, tiny_model, task):
    """One SFT step on the trainer group and the same step done plainly on an HF model."""
    actor, _ = roles
    _, (train, _) = task
    tok = AutoTokenizer.from_pretrained(tiny_model)
    probs = train[:8]
    batch = pack([tok(p.prompt).input_ids for p in probs],
                 [tok(p.answer).input_ids + [tok.eos_token_id] for p in probs], tok.eos_token_id)
    tokens = float(batch["response_mask"].sum())
    actor.all("configure_optimizer", OptimConfig(LR, 0.0, (0.9, 0.999), 0, 10, "constant"))
    metrics = actor.dp("train_step", batch, SFTLoss(), tokens)[0]

    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    before = copy.deepcopy(ref)
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=0.0)
    logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    loss = -(lp * batch["response_mask"][:, 1:]).sum() / tokens
    loss.backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    opt.step()
    return batch, metrics, ref, before, float(loss), float(ref_norm)


def test_trainer_step_matches_plain_hf(stepped, roles):
    actor, _ = roles
    batch, metrics, ref, before, ref_loss, ref_norm = stepped
    assert abs(metrics["loss"] - ref_loss) < 1e-5
    assert abs(metrics["actor/grad_norm"] - ref_norm) < 1e-4
    ours = torch.cat(actor.dp("logprobs", batch))
    theirs = hf_logprobs(ref, batch)
    mask = batch["attention_mask"].bool()
    assert (ours - theirs)[mask].abs().max() < 1e-5
    # and the step really moved the model
    assert (hf_logprobs(before, batch) - theirs)[mask].abs().max() > 1e-3


def test_saved_checkpoint_loads_with_plain_hf(stepped, roles, tmp_path):
    actor, _ = roles
    batch, _, ref, *_ = stepped
    actor.all("save", str(tmp_path / "ckpt"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    assert AutoTokenizer.from_pretrained(tmp_path / "ckpt")("1+2=").input_ids
    mask = batch["attention_mask"].bool()
    assert (hf_logprobs(loaded, batch) - hf_logprobs(ref, batch))[mask].abs().max() < 1e-5


def test_vllm_logprobs_equal_trainer_after_push(stepped, roles, tiny_model, task):
    """Two trainer ranks push into two vLLM engines; both then score like the trainer."""
    actor, engines = roles
    _, _, ref, *_ = stepped
    _, (_, held_out) = task
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tok(p.prompt).input_ids for p in held_out[:16]]
    group = RolloutGroup(engines, tok.eos_token_id)
    stale = group.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=6, seed=1))

    sent = [b for b, _ in actor.all("sync_weights")]
    assert sent[0] > 1 << 16 and sent[1:] == [0]  # several buckets, all from rank 0

    batch = group.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=6, seed=2))
    mask = batch["response_mask"].bool()
    trainer = torch.cat(actor.dp("logprobs", batch))
    for rows in (slice(0, 32), slice(32, 64)):  # engine 0's prompts, engine 1's prompts
        assert (batch["rollout_logprobs"] - trainer)[rows][mask[rows]].abs().max() < 1e-5
    assert (batch["rollout_logprobs"] - hf_logprobs(ref, batch))[mask].abs().max() < 1e-5
    # before the push vLLM held the old weights: its log-probs were not the trainer's
    stale_trainer = torch.cat(actor.dp("logprobs", stale))
    smask = stale["response_mask"].bool()
    assert (stale["rollout_logprobs"] - stale_trainer)[smask].abs().max() > 1e-3


def test_two_engines_sample_what_one_does(roles, tiny_model, task):
    """Seeds are global to the round: spreading prompts over engines changes no sample."""
    _, engines = roles
    _, (_, held_out) = task
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tok(p.prompt).input_ids for p in held_out[16:28]]
    sampling = Sampling(n=4, temperature=1.0, max_new_tokens=6, seed=123)
    one = RolloutGroup(engines[:1], tok.eos_token_id).generate(prompts, sampling)
    two = RolloutGroup(engines, tok.eos_token_id).generate(prompts, sampling)
    width = min(one["input_ids"].shape[1], two["input_ids"].shape[1])
    assert torch.equal(one["group_ids"], two["group_ids"])
    assert torch.equal(one["response_mask"][:, :width], two["response_mask"][:, :width])
    assert torch.equal((one["input_ids"] * one["attention_mask"])[:, :width], (two["input_ids"] * two["attention_mask"])[:, :width])
    # and the samples are not all the same (the seeds differ per prompt)
    assert len({tuple(r.tolist()) for r in one["input_ids"]}) > len(prompts)
    # unseeded requests, the engine reseeded per round: the same round draws the same samples
    fast = dataclasses.replace(sampling, seed_per_prompt=False)
    a, b = (RolloutGroup(engines[:1], tok.eos_token_id).generate(prompts, fast) for _ in range(2))
    assert torch.equal(a["input_ids"], b["input_ids"]) and len({tuple(r.tolist()) for r in a["input_ids"]}) > len(prompts)


def test_responses_end_at_the_first_stop_string(roles, tiny_model, task):
    """`rl.stop`: vLLM ends a response at the first stop string it produces, keeping it. Reference:
    the same seeded samples without stop strings (they agree token for token up to the stop),
    cut by a plain loop at the first token whose text completes a stop string."""
    _, engines = roles
    _, (train, _) = task
    tok = AutoTokenizer.from_pretrained(tiny_model)
    stop = ("+", "=", "1")
    group = RolloutGroup(engines[:1], tok.eos_token_id)
    prompts = [tok(p.prompt).input_ids for p in train[:32]]
    free = group.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=12, seed=5))
    stopped = group.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=12, seed=5, stop=stop))

    def responses(batch):
        mask = batch["response_mask"].bool()
        return [batch["input_ids"][i][mask[i]].tolist() for i in range(len(mask))]

    cut = 0
    for ids, mine in zip(responses(free), responses(stopped)):
        want = next((ids[:k] for k in range(1, len(ids) + 1) if any(s in tok.decode(ids[:k]) for s in stop)), ids)
        cut += len(want) < len(ids)
        assert mine == want, (tok.decode(ids), tok.decode(mine))
    assert cut >= 3  # the stop strings did end some responses early


def test_push_with_missing_or_misnamed_tensor_fails(roles, tiny_model):
    """A push must carry every weight under its real name, or it fails before serving."""
    from safetensors.torch import load_file

    _, engines = roles
    weights = load_file(f"{tiny_model}/model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    misnamed = [(n.replace(name, "model.layers.0.mlp.upp_proj.weight"), t) for n, t in weights.items()]
    ray.get(engines[0].begin_weight_update.remote())
    with pytest.raises(ray.exceptions.RayTaskError, match="upp_proj"):
        for bucket in pack_buckets(misnamed, 1 << 30):
            ray.get(engines[0].receive_weights.remote(bucket))
    ray.get(engines[0].begin_weight_update.remote())
    for bucket in pack_buckets([(n, t) for n, t in weights.items() if n != name], 1 << 30):
        ray.get(engines[0].receive_weights.remote(bucket))
    with pytest.raises(ray.exceptions.RayTaskError, match=r"missing 2 of 51 tensors"):
        ray.get(engines[0].finish_weight_update.remote())  # the dropped one and the tied head


def test_critic_value_step_matches_plain_hf(roles, tiny_model, task):
    """The critic (2 ranks, FSDP2, a value head) against an HF token-classification model doing
    the same clipped value-loss step by hand."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    from rlhf.algos.losses import ValueLoss

    _, (train, _) = task
    tok = AutoTokenizer.from_pretrained(tiny_model)
    probs = train[8:16]
    batch = pack([tok(p.prompt).input_ids for p in probs],
                 [tok(p.answer).input_ids + [tok.eos_token_id] for p in probs], tok.eos_token_id)
    mask = batch["response_mask"]
    g = torch.Generator().manual_seed(0)
    batch["returns"] = torch.randn(mask.shape, generator=g) * mask
    batch["values"] = torch.zeros(mask.shape)  # the zero-initialised head's values
    engine_cfg = EngineConfig(dtype="float32", micro_batch_size=2, max_grad_norm=1.0, seed=0, trust_remote_code=False)
    critic = TrainerGroup(2, ENGINES["automodel"], tiny_model, engine_cfg, trainable=True,
                          num_cpus=1, num_gpus=0, name="test-critic", head="value")
    try:
        # a no-grad forward before the optimizer is built (it once left unsharded parameters behind)
        assert torch.cat(critic.dp("values", batch)).abs().max() == 0
        critic.all("configure_optimizer", OptimConfig(LR, 0.0, (0.9, 0.999), 0, 10, "constant"))
        metrics = critic.dp("train_step", batch, ValueLoss(clip=0.2), float(mask.sum()))[0]
        after = torch.cat(critic.dp("values", batch))
    finally:
        critic.shutdown()

    config = AutoConfig.from_pretrained(tiny_model, num_labels=1)
    ref = AutoModelForTokenClassification.from_pretrained(tiny_model, config=config, dtype=torch.float32)
    ref.eval()  # the reference step runs without dropout (the head has p=0.1 by default)
    with torch.no_grad():
        ref.score.weight.zero_()
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=0.0)
    v = torch.nn.functional.pad(ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, 0], (1, 0))
    clipped = v.clamp(-0.2, 0.2)
    loss = 0.5 * (torch.maximum((v - batch["returns"]) ** 2, (clipped - batch["returns"]) ** 2) * mask).sum() / mask.sum()
    loss.backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    opt.step()
    assert abs(metrics["critic/grad_norm"] - float(ref_norm)) < 1e-4
    with torch.no_grad():
        v_ref = torch.nn.functional.pad(
            ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, 0], (1, 0))
    assert abs(metrics["loss"] - loss.item()) < 1e-5
    m = batch["attention_mask"].bool()
    assert (after - v_ref)[m].abs().max() < 1e-5 and after[m].abs().max() > 1e-3


@pytest.mark.parametrize("poison", ["nan_loss_finite_grads", "inf_grads"])
def test_non_finite_loss_or_gradient_skips_the_update_on_every_rank(stepped, roles, poison):
    """A loss whose value is NaN while its gradients are finite, and one whose gradients are
    infinite: the engine skips the optimizer step on both ranks and says so; the weights stay."""
    actor, _ = roles
    batch = stepped[0]

    class Poisoned(SFTLoss):  # defined here so Ray ships it by value to the workers
        def __call__(self, out, mb):
            loss, stats = super().__call__(out, mb)
            if poison == "nan_loss_finite_grads":
                return loss + torch.tensor(float("nan")), stats
            return loss * torch.tensor(float("inf")), stats

    before = torch.cat(actor.dp("logprobs", batch))
    metrics = actor.dp("train_step", batch, Poisoned(), float(batch["response_mask"].sum()))
    assert [m["actor/skipped_step"] for m in metrics] == [1.0, 1.0]
    assert not torch.isfinite(torch.tensor(metrics[0]["loss"]))
    after = torch.cat(actor.dp("logprobs", batch))
    assert torch.equal(before, after) and torch.isfinite(after).all()


def test_waiting_for_starting_engines_names_the_slow_one_and_raises_a_failed_start_at_once(roles, capsys):
    """wait_started: while an actor's constructor runs, a line per interval names it (and not the
    one already up); a constructor that raises fails the wait with its error at once, without
    waiting for another actor still starting."""
    from rlhf.orchestration.starting import wait_started

    @ray.remote(num_cpus=0)
    class Starting:
        def __init__(self, seconds: float, fail: bool = False):
            time.sleep(seconds)
            if fail:
                raise ValueError("no such model folder")

    up = Starting.remote(0.0)
    ray.get(up.__ray_ready__.remote())
    t = time.time()
    wait_started({"engine A": up, "engine B": Starting.remote(2.5)}, every_s=0.5)
    waited = time.time() - t
    lines = [line for line in capsys.readouterr().out.splitlines() if "still starting" in line]
    assert waited >= 2.0 and 2 <= len(lines) <= waited / 0.5 + 1, (waited, lines)
    assert all(line.startswith("[rlhf] engine B still starting (") for line in lines), lines

    slow, failing = Starting.remote(30.0), Starting.remote(0.0, fail=True)
    t = time.time()
    with pytest.raises(ray.exceptions.RayActorError, match="no such model folder"):
        wait_started({"engine C": slow, "engine D": failing}, every_s=60.0)
    assert time.time() - t < 20  # raised while engine C was still in its 30 s constructor
    ray.kill(slow)

    # the same wait for any start-up calls (a trainer group's rank inits): results by name
    from rlhf.orchestration.starting import wait_for

    @ray.remote(num_cpus=0)
    def init(rank: int, seconds: float):
        time.sleep(seconds)
        return rank * 10

    got = wait_for({"actor rank 0": init.remote(0, 1.2), "actor rank 1": init.remote(1, 0.0)}, every_s=0.5)
    assert got == {"actor rank 0": 0, "actor rank 1": 10}
    assert any(line.startswith("[rlhf] actor rank 0 still starting (") for line in capsys.readouterr().out.splitlines())
