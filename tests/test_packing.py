"""Packing and token-budget micro-batches must not change what the engine computes: checked
against each sequence run alone through plain Hugging Face, and across the engine's modes."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engines import micro_batches
from engines.base import EngineConfig, OptimConfig
from rlhf.algos.losses import SFTLoss
from core.batch import pack


def test_token_budget_keeps_every_micro_batch_within_budget_and_every_row_once():
    rng = random.Random(0)
    for packed in (True, False):
        for _ in range(50):
            lengths = torch.tensor([rng.randint(1, 60) for _ in range(rng.randint(1, 40))])
            budget = rng.randint(60, 400)
            n = micro_batches.count(lengths, 4, budget, packed)
            parts = micro_batches.split(lengths, n, budget, packed)
            rows = sorted(int(i) for p in parts for i in p)
            assert rows == list(range(len(lengths)))
            assert len(parts) == n and all(len(p) for p in parts)
            costs = [int(lengths[p].sum()) if packed else len(p) * int(lengths[p].max()) for p in parts]
            assert all(c <= budget for c, p in zip(costs, parts) if len(p) > 1)  # a lone row may exceed it
            # asking for more micro-batches than the budget needs (another rank needs more): all non-empty
            k = min(n + 2, len(lengths))
            more = micro_batches.split(lengths, k, budget, packed)
            assert len(more) == k and sorted(int(i) for p in more for i in p) == rows and all(len(p) for p in more)
            more_costs = [int(lengths[p].sum()) if packed else len(p) * int(lengths[p].max()) for p in more]
            assert all(c <= budget for c, p in zip(more_costs, more) if len(p) > 1)


def test_token_budget_groups_rows_of_similar_length():
    """Padded micro-batches cost rows x longest row: long rows go together, short ones together."""
    parts = micro_batches.split(torch.tensor([100, 10, 100, 10]), 2, 220, packed=False)
    assert sorted(p.tolist() for p in parts) == [[0, 2], [1, 3]]
    # packed: 24 tokens fit two micro-batches of 12 exactly (5+5+2, 4+4+4)
    lengths = torch.tensor([5, 5, 4, 4, 4, 2])
    parts = micro_batches.split(lengths, micro_batches.count(lengths, 1, 12, True), 12, True)
    assert sorted(int(lengths[p].sum()) for p in parts) == [12, 12]


def test_rows_split_is_contiguous_by_micro_batch_size():
    parts = micro_batches.split(torch.tensor([5, 3, 9, 2, 7]), micro_batches.count(torch.ones(5), 2, None, False), None, False)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4]]


def _batch(tiny_model, task, n=12):
    _, (train, _) = task
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = train[:n]
    # uneven lengths: every other answer repeated
    return pack([tok(p.prompt).input_ids for p in rows],
                [tok(p.answer).input_ids * (1 + i % 3) + [tok.eos_token_id] for i, p in enumerate(rows)], tok.eos_token_id)


def test_packed_forward_equals_each_sequence_alone(tiny_model, task):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    batch = _batch(tiny_model, task)
    ids, pos, keep = micro_batches.pack_rows(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits  # a cache turns packing detection off
    lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    packed = micro_batches.unpack(torch.nn.functional.pad(lp, (1, 0))[None], keep)
    for i in range(len(batch)):
        n = int(batch["attention_mask"][i].sum())
        seq = batch["input_ids"][i, :n][None]
        with torch.no_grad():
            alone = torch.log_softmax(model(input_ids=seq).logits[0, :-1], -1).gather(-1, seq[0, 1:, None]).squeeze(-1)
        assert (packed[i, 1:n] - alone).abs().max() < 1e-5
        assert packed[i, 0] == 0 and (packed[i, n:] == 0).all()


@pytest.mark.parametrize("engine_name", ["automodel", "fsdp"])
def test_engine_results_do_not_depend_on_packing_or_token_budget(tiny_model, task, one_rank_world, engine_name):
    from engines import ENGINES
    from rlhf.orchestration.workers import load_object

    batch = _batch(tiny_model, task)
    tokens = float(batch["response_mask"].sum())
    opt = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=1, lr_schedule="constant")
    results = {}
    for packing in (False, True):
        for budget in (None, 40):
            cfg = EngineConfig("float32", 5, 1.0, 0, False, packing=packing, max_tokens_per_micro_batch=budget)
            engine = load_object(ENGINES[engine_name])(tiny_model, cfg, trainable=True)
            engine.configure_optimizer(opt)
            lp = engine.logprobs(batch)
            m = engine.train_step(batch, SFTLoss(), tokens)
            results[packing, budget] = (lp, m["loss"], m["actor/grad_norm"],
                                        engine.last_logprobs())
    base_lp, base_loss, base_norm, _ = results[False, None]
    mask = batch["attention_mask"].bool()
    for key, (lp, loss, norm, last) in results.items():
        assert (lp - base_lp)[mask].abs().max() < 1e-5, key
        assert (last - base_lp)[mask].abs().max() < 1e-5, key  # the train forward's log-probs, in row order
        assert abs(loss - base_loss) < 1e-5, key
        assert abs(norm - base_norm) / base_norm < 1e-5, key
