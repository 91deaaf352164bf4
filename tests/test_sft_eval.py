"""SFT in epochs and the held-out SFT eval loss: the held-out rows (sft.eval_fraction) are drawn
by seed and never trained on, epochs give ceil(epochs x rows / batch) steps with every row once
per pass, and the eval loss is a plain HF forward's token-mean NLL on the held-out rows, measured
without changing the training (the real Automodel trainer group, 2 gloo ranks)."""

import math

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engines import ENGINES
from engines.base import EngineConfig, OptimConfig
from rlhf.config import load_config
from rlhf.orchestration.controller import Controller
from rlhf.data.holdout import hold_out
from rlhf.data.render import Renderer
from rlhf.data.rows import DataError, Row
from rlhf.data.sampler import Sampler
from rlhf.orchestration.roles import Roles
from rlhf.config.stages import plan
from rlhf.orchestration.worker_group import TrainerGroup


def _rows(n):
    return [Row(prompt=f"{i}+1=", answer=str(i + 1), response=str(i + 1), origin=f"row {i}") for i in range(n)]


def test_held_out_rows_are_drawn_by_seed_and_sized_by_the_fraction():
    rows = _rows(24)
    train, held = hold_out(rows, 0.25, seed=0)
    assert len(held) == 6 and len(train) == 18  # round(0.25 x 24)
    assert {r.origin for r in train} | {r.origin for r in held} == {r.origin for r in rows}
    assert not {r.origin for r in train} & {r.origin for r in held}
    assert [r.origin for r in train] == [r.origin for r in rows if r not in held]  # order kept
    assert hold_out(rows, 0.25, seed=0) == (train, held)  # the same rows on every run
    assert hold_out(rows, 0.25, seed=1)[1] != held
    assert hold_out(rows, 0.0, seed=0) == (rows, [])
    assert len(hold_out(rows, 0.05, seed=0)[1]) == 1  # round(1.2)


@pytest.mark.parametrize("fraction,must_name", [(0.01, ["sft.eval_fraction=0.01", "no row", "0.0417"]),
                                                (0.99, ["sft.eval_fraction=0.99", "none to train on", "0.958"])])
def test_a_fraction_that_leaves_no_eval_or_no_training_rows_is_refused(fraction, must_name):
    with pytest.raises(DataError) as e:
        hold_out(_rows(24), fraction, seed=0)
    assert all(word in str(e.value) for word in must_name), str(e.value)


@pytest.mark.parametrize("epochs,batch,steps", [(2, 4, 9), (1, 4, 5), (1.5, 4, 7), (3, 6, 9)])
def test_epochs_give_their_steps_and_every_training_row_once_per_pass(epochs, batch, steps):
    """18 training rows after 6 are held out of 24, as the pipeline splits them; the last batch of
    a pass that does not divide evenly runs into the next pass."""
    cfg = load_config([f"sft.epochs={epochs}", f"sft.batch_size={batch}", "sft.eval_fraction=0.25", "sft.steps=1000"])
    (stage,) = [s for s in plan(cfg) if s.kind == "sft"]
    train, held = hold_out(_rows(24), cfg.sft.eval_fraction, cfg.seed)
    assert stage.steps_for(len(train)) == steps  # ceil(epochs x 18 / batch), by hand; sft.steps is not used
    sampler = Sampler(train, cfg.seed + stage.index)
    seen = [r.origin for _ in range(steps) for r in sampler.next(batch)]
    stopped = Sampler(train, cfg.seed + stage.index)  # a run stopped after step 3 saves its data position
    for _ in range(3):
        stopped.next(batch)
    resumed = Sampler(train, cfg.seed + stage.index)
    state = stopped.state_dict()
    resumed.load_state_dict(state)
    assert [r.origin for _ in range(steps - 3) for r in resumed.next(batch)] == seen[3 * batch:]
    assert not set(seen) & {r.origin for r in held}
    passes = [seen[i: i + 18] for i in range(0, len(seen), 18)]
    for p in passes[: int(epochs)]:  # each whole pass: every training row once
        assert sorted(p) == sorted(r.origin for r in train)
    assert len(passes) > 1 and passes[0] != passes[1][: len(passes[0])]  # each pass shuffled anew
    assert len(seen) >= epochs * 18 > len(seen) - batch


def test_without_epochs_sft_steps_decides():
    (stage,) = [s for s in plan(load_config(["sft.steps=7"])) if s.kind == "sft"]
    assert stage.steps_for(18) == 7 and not stage.empty
    (stage,) = [s for s in plan(load_config(["sft.steps=0"])) if s.kind == "sft"]
    assert stage.empty
    (stage,) = [s for s in plan(load_config(["sft.steps=0", "sft.epochs=1"])) if s.kind == "sft"]
    assert not stage.empty and stage.steps_for(256) == 2  # epochs replace steps


def _hf_nll(model_path, examples) -> float:
    """Token-mean NLL over the loss-masked tokens, one plain HF forward per example (fp32)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ids, mask in examples:
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            m = torch.tensor(mask[1:], dtype=torch.float64)
            total -= float((lp * m).sum())
            tokens += int(m.sum())
    return total / tokens


@pytest.mark.e2e
def test_eval_loss_is_the_held_out_nll_and_does_not_change_training(tiny_model, task, tmp_path, ray_cluster):
    cfg, (problems, _) = task
    train, held = hold_out(problems[:40], 0.25, cfg.seed)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    renderer = Renderer(tok, cfg.data.chat_template, cfg.data.system_prompt)
    ray.init(address=ray_cluster)
    try:
        engine_cfg = EngineConfig(dtype="float32", micro_batch_size=4, max_grad_norm=1.0, seed=0, trust_remote_code=False)
        actor = TrainerGroup(2, ENGINES["automodel"], tiny_model, engine_cfg, trainable=True, num_cpus=1, num_gpus=0,
                             name="sft-eval")
        ctl = Controller(cfg, Roles(actor=actor, rollout=None), tok, None, renderer)
        actor.all("configure_optimizer", OptimConfig(3e-3, 0.0, (0.9, 0.999), 0, 4, "constant"))
        actor.all("save_state", str(tmp_path / "start"))

        def run(eval_every: bool) -> tuple[list[float], list[float]]:
            sampler, losses, evals = Sampler(train, 0), [], [ctl.sft_eval_loss(held)] if eval_every else []
            for _ in range(4):
                losses.append(ctl.sft_step(sampler.next(8))["sft/loss"])
                if eval_every:
                    evals.append(ctl.sft_eval_loss(held))
            return losses, evals

        with_eval, evals = run(True)
        actor.all("save", str(tmp_path / "trained"))
        actor.all("load_state", str(tmp_path / "start"))  # weights, optimizer, schedule and RNG as they were
        without_eval, _ = run(False)
        assert ctl.sft_eval_loss(held) == evals[-1]
    finally:
        ray.shutdown()
    assert with_eval == without_eval, (with_eval, without_eval)  # to the bit
    examples = [renderer.sft_example(r) for r in held]
    for path, got in [(tiny_model, evals[0]), (tmp_path / "trained", evals[-1])]:
        want = _hf_nll(path, examples)
        print(f"sft/eval_loss {got:.6f} vs plain HF token-mean NLL {want:.6f} ({path}): diff {abs(got - want):.1e}")
        assert abs(got - want) < 1e-5, (got, want)
    assert evals[-1] < evals[0] - 0.05 and all(math.isfinite(x) for x in evals)  # training moved it
