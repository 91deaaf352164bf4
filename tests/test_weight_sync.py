"""Every transport's two ends are built the way the workers build them (rlhf/workers.py): a
sender that takes other arguments would fail only when a run picks that transport."""

import pytest
import torch

from rlhf.orchestration.workers import load_object
from weight_sync import TRANSPORTS
from weight_sync.base import WeightSender


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_every_sender_is_built_as_the_trainer_worker_builds_it(transport):
    sender_cls = load_object(TRANSPORTS[transport][0])
    # rank 1: a sender that opens a channel (NCCL) does so on rank 0 only
    sender = sender_cls(1, [], 1 << 20, ["a.weight"], torch.bfloat16)
    assert isinstance(sender, WeightSender) and sender.dtype is torch.bfloat16
    # the export is asked for the wire dtype unless the transport casts as it copies
    assert sender.export_dtype is (None if sender.casts_in_copy else torch.bfloat16)


class _Recording(WeightSender):
    def send(self, weights):
        self.got = [name for name, _ in weights]
        return 0


def test_a_tensor_the_rollout_model_lacks_is_skipped_unless_it_is_one_already_sent():
    embed, norm, extra = torch.ones(4, 2), torch.ones(2), torch.ones(3)
    sender = _Recording(0, [], 1 << 20, ["model.embed_tokens.weight", "model.norm.weight"])
    # a tied head is the embedding tensor itself; a copy of it with equal values is not
    sender.push(lambda dtype: iter([("model.embed_tokens.weight", embed), ("model.norm.weight", norm),
                                    ("rotary.inv_freq", extra), ("lm_head.weight", embed),
                                    ("copied_head.weight", embed.clone())]))
    assert sender.got == ["model.embed_tokens.weight", "model.norm.weight"]
    assert sender.skipped == {"rotary.inv_freq", "copied_head.weight"}


class _DiesAfterOne(WeightSender):
    def send(self, weights):
        next(weights)
        raise RuntimeError("the rollout engine died")


def test_a_failed_send_still_goes_through_the_whole_export():
    """Every rank gathers each tensor with the others: a rank that stopped at the failure would
    leave them waiting in a collective."""
    produced = []

    def export(dtype):
        for i in range(5):
            produced.append(i)  # on a real rank: the gather of tensor i, with every other rank
            yield f"w{i}", torch.zeros(1)

    with pytest.raises(RuntimeError, match="died"):
        _DiesAfterOne(0, [], 1 << 20, [f"w{i}" for i in range(5)]).push(export)
    assert produced == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("engine_name", ["automodel", "fsdp"])
def test_a_tied_head_is_exported_as_the_embedding_itself(tiny_model, one_rank_world, engine_name):
    """The real export of a tied model: where the rollout model uses the embedding as its head, the
    head is not sent and not reported as skipped; where it keeps a copy of its own, the head is sent
    with the embedding's values."""
    from engines import ENGINES
    from engines.base import EngineConfig
    from weight_sync.base import checkpoint_weight_names

    engine = load_object(ENGINES[engine_name])(tiny_model, EngineConfig("float32", 8, 1.0, 0, False), False)
    assert engine.tied
    for head_kept in (False, True):
        sender = _Recording(0, [], 1 << 20, checkpoint_weight_names(tiny_model, tied=head_kept))
        sender.push(engine.export_weights)
        assert sorted(sender.got) == sorted(sender.names) and not sender.skipped, (head_kept, sender.skipped)
    weights = dict(engine.export_weights())
    assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
