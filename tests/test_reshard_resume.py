"""Resume at another parallel layout: a state saved by a trainer group of one layout (world size,
tensor-parallel size) loaded by a group of another, on both engines and with LoRA.

Each layout is a torch.distributed world (gloo) of rank processes that build the engine as a
trainer worker does and run SFT steps on the built-in task. The reference is the uninterrupted
run: the steps the saving layout takes after its save. The optimizer moments a resumed layout
holds, gathered whole here (`full_tensor`, not through the checkpoint code), must equal the saving
layout's gathered whole; the resumed steps' losses and gradient norms must match the uninterrupted
run's in float32 up to the order of reductions (each layout sums other shards)."""

import gc
import os
import queue
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.elastic.utils.distributed import get_free_port
from torch.distributed.tensor import DTensor

from engines import ENGINES
from engines.base import EngineConfig, LoraConfig, OptimConfig
from sft_batches import sft_batches

BEFORE, AFTER = 2, 3  # steps before the save, steps compared after it
# Warmup then cosine decay, and weight decay: a resumed run that lost the schedule's position
# would take other steps.
OPTIM = OptimConfig(5e-4, 0.01, (0.9, 0.999), 1, BEFORE + AFTER, "cosine")
LORA_OPTIM = OptimConfig(5e-3, 0.01, (0.9, 0.999), 1, BEFORE + AFTER, "cosine")
REL = 1e-5
MOST_RANKS = 4


def _whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()


def _gathered(engine) -> dict[str, torch.Tensor]:
    """Every trainable weight and its AdamW state, whole, by parameter name (a collective)."""
    out = {}
    for name, p in engine.model.named_parameters():
        if not p.requires_grad:
            continue
        out[name] = _whole(p)
        for key, value in sorted(engine.optimizer.state[p].items()):
            out[f"{name}:{key}"] = _whole(value)
    return out


def _layout(rank, world, port, spec, cfg, optim, model, batches, script):
    """One rank of a layout: build the engine and run `script`; rank 0's results."""
    from rlhf.algos.losses import SFTLoss
    from core.batch import split
    from rlhf.orchestration.workers import load_object

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    engine = load_object(spec)(model, cfg, trainable=True)
    results = {}
    for op, *args in script:
        if op == "optim":
            engine.configure_optimizer(optim)
        elif op == "train":
            name, first, last = args
            results[name] = []
            for batch in batches[first:last]:
                shard = split(batch, engine.dp_size)[engine.dp_rank]
                m = engine.train_step(shard, SFTLoss(), float(batch["response_mask"].sum()))
                results[name].append({k: m[k] for k in ("loss", "actor/grad_norm", "actor/lr")})
        elif op == "save":
            engine.save_state(args[0])
        elif op == "load":
            engine.load_state(args[0])
        elif op == "gather":
            results[args[0]] = _gathered(engine)
    return results


def _serve(rank, inbox, outbox):
    """A rank process: runs one layout after another, each in a fresh torch.distributed world."""
    torch.set_num_threads(1)
    while (job := inbox.get()) is not None:
        world, port, out, args = job
        try:
            results = _layout(rank, world, port, *args)
            if rank == 0:
                torch.save(results, out)
            outbox.put((rank, None))
        except BaseException:
            outbox.put((rank, traceback.format_exc()))
        finally:
            gc.collect()  # the engine's sharded tensors go before their process group
            if dist.is_initialized():
                dist.destroy_process_group()


class Ranks:
    """Rank processes started once and reused by every layout (the first `world` of them form
    it): on a small CPU machine starting a process, mostly imports, costs more than the steps."""

    def __init__(self):
        self.procs = []

    def _start(self):
        ctx = mp.get_context("spawn")
        self.inboxes = [ctx.Queue() for _ in range(MOST_RANKS)]
        self.outbox = ctx.Queue()
        self.procs = [ctx.Process(target=_serve, args=(r, self.inboxes[r], self.outbox), daemon=True)
                      for r in range(MOST_RANKS)]
        for proc in self.procs:
            proc.start()

    def run(self, out, world, *args):
        if not self.procs:
            self._start()
        port = get_free_port()
        for rank in range(world):
            self.inboxes[rank].put((world, port, str(out), args))
        for _ in range(world):
            try:
                rank, error = self.outbox.get(timeout=900)
            except queue.Empty:
                error, rank = "no answer in 900 s", "?"
            if error is not None:
                self.close()  # the other ranks may wait in a collective: end them
                raise RuntimeError(f"rank {rank} of a {world}-rank layout failed:\n{error}")
        return torch.load(out, weights_only=True)

    def close(self):
        for proc in self.procs:
            proc.kill()
            proc.join()
        self.procs = []


@pytest.fixture(scope="module")
def ranks():
    pool = Ranks()
    yield pool
    pool.close()


def _run(ranks, tmp_path, name, engine, world, tp, model, batches, script, lora=None, optim=OPTIM):
    """`script` on a layout of `world` ranks at tp=`tp`; rank 0's results."""
    cfg = EngineConfig(dtype="float32", micro_batch_size=2, max_grad_norm=1.0, seed=0, trust_remote_code=False,
                       tp_size=tp, lora=lora)
    return ranks.run(tmp_path / f"{name}.pt", world, ENGINES[engine], cfg, optim, model, batches, script)


def _saving(state):
    """Train, save after BEFORE steps, then go on uninterrupted."""
    return [("optim",), ("train", "before", 0, BEFORE), ("save", str(state)), ("gather", "saved"),
            ("train", "after", BEFORE, BEFORE + AFTER)]


def _resuming(state):
    return [("optim",), ("load", str(state)), ("gather", "loaded"), ("train", "after", BEFORE, BEFORE + AFTER)]


def _compare(label, saved, resumed):
    """The resumed layout's state and steps against the saving layout's; the worst relative gaps."""
    assert saved["saved"].keys() == resumed["loaded"].keys(), label
    moments = [k for k in saved["saved"] if ":exp_avg" in k]
    assert moments, label
    for key, want in saved["saved"].items():
        got = resumed["loaded"][key]
        assert got.shape == want.shape and torch.equal(got, want), f"{label}: {key} differs after resharding"
    gaps = {"loss": 0.0, "actor/grad_norm": 0.0}
    for want, got in zip(saved["after"], resumed["after"], strict=True):
        assert got["actor/lr"] == pytest.approx(want["actor/lr"], rel=1e-12), label
        for key in gaps:
            gap = abs(got[key] - want[key]) / abs(want[key])
            gaps[key] = max(gaps[key], gap)
            assert gap < REL, (label, key, got[key], want[key])
    print(f"{label}: moments and weights equal after resharding; next {AFTER} steps: max relative gap loss "
          f"{gaps['loss']:.1e}, grad norm {gaps['actor/grad_norm']:.1e}")


@pytest.mark.parametrize("engine", ["automodel", "fsdp"])
def test_a_state_resumes_at_another_world_size_and_tensor_parallel_size(ranks, tiny_model, task, tmp_path, engine):
    batches = sft_batches(tiny_model, task, BEFORE + AFTER)
    tp_state, dp_state = tmp_path / "state-tp2", tmp_path / "state-dp2"
    tp2 = _run(ranks, tmp_path, "tp2", engine, 2, 2, tiny_model, batches, _saving(tp_state))
    # The dp=2 group saves its own state, then resumes the tp=2 one (same world size, other layout).
    dp2 = _run(ranks, tmp_path, "dp2", engine, 2, 1, tiny_model, batches,
               _saving(dp_state) + [("optim",), ("load", str(tp_state)), ("gather", "loaded"),
                                    ("train", "resumed", BEFORE, BEFORE + AFTER)])
    one = _run(ranks, tmp_path, "one", engine, 1, 1, tiny_model, batches, _resuming(dp_state))
    four = _run(ranks, tmp_path, "four", engine, 4, 1, tiny_model, batches, _resuming(dp_state))

    # the steps moved the model: the moments are not zeros and the loss falls
    assert dp2["before"][0]["loss"] > dp2["after"][-1]["loss"]
    _compare(f"{engine} world 2 -> 1", dp2, one)
    _compare(f"{engine} world 2 -> 4", dp2, four)
    _compare(f"{engine} tp=2 -> dp=2", tp2, {"loaded": dp2["loaded"], "after": dp2["resumed"]})


def test_a_lora_state_resumes_at_another_world_size(ranks, tiny_model, task, tmp_path):
    batches = sft_batches(tiny_model, task, BEFORE + AFTER)
    lora = LoraConfig(rank=4, alpha=8.0, target_modules=("*_proj",))
    state = tmp_path / "state-lora"
    kw = {"lora": lora, "optim": LORA_OPTIM}
    dp2 = _run(ranks, tmp_path, "lora-dp2", "automodel", 2, 1, tiny_model, batches, _saving(state), **kw)
    one = _run(ranks, tmp_path, "lora-one", "automodel", 1, 1, tiny_model, batches, _resuming(state), **kw)
    four = _run(ranks, tmp_path, "lora-four", "automodel", 4, 1, tiny_model, batches, _resuming(state), **kw)
    assert all(":" in k or "lora_" in k for k in dp2["saved"])  # only the adapters train
    assert dp2["before"][0]["loss"] > dp2["after"][-1]["loss"]
    _compare("automodel LoRA world 2 -> 1", dp2, one)
    _compare("automodel LoRA world 2 -> 4", dp2, four)


def test_a_state_of_another_model_or_dtype_is_refused_naming_the_tensor(tiny_model, tmp_path, one_rank_world):
    """What no layout can reshard: LoRA adapters of another rank (other shapes), a LoRA base held in
    another dtype, a model without the adapters (other tensors)."""
    from rlhf.orchestration.workers import load_object

    build = load_object(ENGINES["automodel"])

    def engine(**change):
        cfg = EngineConfig(dtype="float32", micro_batch_size=2, max_grad_norm=1.0, seed=0, trust_remote_code=False,
                           lora=LoraConfig(rank=4, alpha=8.0, target_modules=("*_proj",)))
        e = build(tiny_model, EngineConfig(**{**cfg.__dict__, **change}), trainable=True)
        e.configure_optimizer(LORA_OPTIM)
        return e

    engine().save_state(str(tmp_path / "state"))
    engine().load_state(str(tmp_path / "state"))  # the same model loads
    cases = [({"lora": LoraConfig(rank=8, alpha=8.0, target_modules=("*_proj",))},
              r"holds another model: model\.layers\.0\.\S+\.lora_A\.weight was saved as \[4, \d+\], this model's "
              r"is \[8, \d+\]"),
             ({"dtype": "bfloat16"}, r"stores model.embed_tokens.weight in torch.float32, this engine holds it in "
                                     r"torch.bfloat16: resume with the dtype"),
             ({"lora": None}, r"holds another model: tensors only in the state \['model.layers.0.mlp.down_proj.lora_A")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            engine(**change).load_state(str(tmp_path / "state"))
    with pytest.raises(FileNotFoundError, match="no torch.distributed.checkpoint .metadata"):
        engine().load_state(str(tmp_path))
