"""Multi-turn trajectories on the real vLLM engine (in this process, the tiny chat model): the
stored ids and log-probs are what plain vLLM samples for each turn's context and seed, the
environment's tokens sit in the context but never in the loss, runs repeat exactly, and every
way a tool can fail is counted while the trajectories finish."""

from pathlib import Path

import pytest
import torch
from local_vllm import local_vllm

HERE = Path(__file__).resolve().parent
PLUGINS = HERE / "env_plugins.py"
DIGITS = tuple("0123456789abcdefghijklmnopqrstuvwxyz*-=")  # a random model rarely ends a turn; these end its turns soon


@pytest.fixture(scope="module")
def engine(tiny_chat_model):
    with local_vllm(tiny_chat_model, 128) as e:
        yield e


def agent(env: str, **kw):
    from rollout.trajectory import AgentConfig

    args = dict(env=env, tool_parser="hermes", max_turns=4, tool_timeout_s=2.0, max_tool_output_chars=2000,
                tool_workers=4, max_in_flight=16)
    args.update(kw)
    return AgentConfig(**args)


ROWS = [{"prompt": "12*34", "answer": "408"}, {"prompt": "56*78", "answer": "4368"}, {"prompt": "90*12", "answer": "1080"}]


def test_sampled_ids_and_logprobs_are_vllms_and_env_tokens_stay_out_of_the_loss(engine):
    from vllm import SamplingParams

    from env_plugins import PLANT
    from rlhf.algos.losses import PolicyLoss
    from rollout.base import Sampling
    from rollout.trajectory import turn_seed

    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=6, stop=DIGITS, seed=7)
    got = engine.trajectories(ROWS, sampling, agent(f"{PLUGINS}:Planted"))
    batch, tok = got.batch, engine.llm.get_tokenizer()
    plant = tok(PLANT, add_special_tokens=False).input_ids
    assert batch["group_ids"].tolist() == [0, 0, 1, 1, 2, 2]
    multi = 0
    for b in range(batch.batch_size[0]):
        n = int(batch["attention_mask"][b].sum())
        ids, mask = batch["input_ids"][b, :n].tolist(), batch["response_mask"][b, :n].bool().tolist()
        # each run of sampled ids is one turn: plain vLLM, given the context before it and the turn's
        # seed, samples exactly those ids with those log-probs
        runs, t = [], 0
        while t < n:
            if mask[t]:
                end = t
                while end < n and mask[end]:
                    end += 1
                runs.append((t, end))
                t = end
            else:
                t += 1
        multi += len(runs) > 1
        seed = 7 + b // 2 + b % 2
        for turn, (start, end) in enumerate(runs):
            params = SamplingParams(n=1, temperature=1.0, max_tokens=6, stop=list(DIGITS), include_stop_str_in_output=True,
                                    logprobs=0, seed=turn_seed(seed, turn))
            ref = engine.llm.generate([{"prompt_token_ids": ids[:start]}], params, use_tqdm=False)[0].outputs[0]
            assert list(ref.token_ids)[: end - start] == ids[start:end]
            want = [lp[i].logprob for i, lp in zip(ref.token_ids, ref.logprobs)][: end - start]
            assert batch["rollout_logprobs"][b, start:end].tolist() == pytest.approx(want, abs=1e-6)
        # the environment's planted message is in the context, never among the loss tokens
        where = [i for i in range(n - len(plant) + 1) if ids[i:i + len(plant)] == plant]
        assert len(where) == len(runs) - 1 and all(not any(mask[i:i + len(plant)]) for i in where)
    assert multi >= 3  # most trajectories had several turns
    # the policy loss has no gradient anywhere the mask is 0 (prompt, environment, padding)
    logprobs = batch["rollout_logprobs"].clone().requires_grad_()
    batch["old_logprobs"] = batch["rollout_logprobs"]
    batch["advantages"] = torch.ones_like(logprobs) * batch["response_mask"]
    loss, _ = PolicyLoss(kind="ppo_clip", clip_low=0.2, clip_high=0.2)({"logprobs": logprobs}, batch)
    loss.backward()
    assert (logprobs.grad[batch["response_mask"] == 0] == 0).all() and logprobs.grad[batch["response_mask"] > 0].abs().sum() > 0
    # the environment's rewards: 0.25 per reply and 0.5 at the end (or less, when a limit cut it)
    for b, convo in enumerate(got.messages):
        replies = sum(m["content"] == PLANT for m in convo)
        ended = sum(m["role"] == "assistant" for m in convo) == 3
        assert float(batch["env_rewards"][b]) == 0.25 * replies + 0.5 * ended
    again = engine.trajectories(ROWS, sampling, agent(f"{PLUGINS}:Planted"))
    assert torch.equal(again.batch["input_ids"], batch["input_ids"]) and again.messages == got.messages


def test_every_tool_failure_is_counted_and_the_trajectories_finish(engine):
    """A tool that raises, one that hangs past its timeout, one that returns 10 MB, one that returns
    an int: each reaches the model as a tool message, each is counted by kind, the calls after it
    still work, and the trajectories end as the environment says."""
    from rollout.base import Sampling

    names = ["raises", "hangs", "huge", "number", "fine"]
    rows = [{"prompt": "1*2", "answer": name} for name in names]
    got = engine.trajectories(rows, Sampling(n=2, temperature=1.0, max_new_tokens=8, stop=DIGITS, seed=3),
                              agent(f"{PLUGINS}:CallsOneTool", max_tool_output_chars=20, tool_workers=2))
    checks = {"raises": lambda t: t.startswith("error: ValueError: this tool always fails"),
              "hangs": lambda t: t == "error: the tool hangs did not finish within 2 s",
              "huge": lambda t: t.startswith("y" * 20 + "\n[... ") and "more characters cut" in t,
              "number": lambda t: t == "error: the tool returned int, not a string", "fine": lambda t: t == "ok 4"}
    for b, convo in enumerate(got.messages):
        name = names[b // 2]
        tool = [m["content"] for m in convo if m["role"] == "tool"]
        assert len(tool) == 1 and checks[name](tool[0]), (name, tool)
        done = sum(m["role"] == "assistant" for m in convo) == 2
        assert got.batch["env_rewards"][b] == (1.0 if done else 0.0)
    assert got.batch["env_rewards"].sum() >= 6  # most reached the environment's end
    for name, kind in {"raises": "exception", "hangs": "timeout", "huge": "truncated", "number": "bad_type"}.items():
        assert got.stats[f"agent/tool_errors/{kind}"] == 2 / len(got.messages), kind
