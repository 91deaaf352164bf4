"""The trajectory loop: one row's multi-turn episode against its environment, token in and token out.

    row -> env.reset -> [ generate a turn -> parse its tool calls -> env.step -> append the reply's tokens ]* -> done

Many trajectories run at once (up to `agent.max_in_flight`), each at its own pace: a trajectory
waiting on its tools does not hold the others, and every engine step serves all turns in flight.
The engine is reached through one coroutine, `turn(prompt ids, seed, max new tokens, sampling)
-> Turn`, so this loop knows no engine. Sampled ids are kept as sampled, with their log-probs; reply ids
(see agents/chat.py) are in the context but masked out of the loss.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from tensordict import TensorDict

from agents.base import ToolEnv
from agents.chat import ChatTokens, as_written
from agents.registry import resolve_env
from agents.tool_calls import ToolCallParser
from agents.tool_runner import ToolRunner


@dataclass(frozen=True)
class AgentConfig:
    """What the driver asks of a multi-turn rollout (`agent.*` in the config)."""

    env: str
    tool_parser: str
    max_turns: int
    tool_timeout_s: float
    max_tool_output_chars: int
    tool_workers: int
    max_in_flight: int
    system_prompt: str | None = None


@dataclass
class Turn:
    ids: list[int]
    logprobs: list[float]
    finish_reason: str | None  # "stop", "length", ...
    pushes: list[int] | None = None  # per token: weight pushes landed before it was sampled (the engine's count)


@dataclass
class Trajectory:
    prompt: list[int]  # the first turn's context (rendered prompt messages and the environment's reset)
    tokens: list[int] = field(default_factory=list)  # everything after the prompt, in order
    sampled: list[bool] = field(default_factory=list)  # per token: sampled (trained on) or a reply (context)
    logprobs: list[float] = field(default_factory=list)  # per token: the rollout's log-prob (0 for replies)
    versions: list[int] = field(default_factory=list)  # per token: the pushes before it was sampled (0 for replies)
    messages: list[dict] = field(default_factory=list)  # the conversation, prompt messages included
    env_reward: float = 0.0
    turns: int = 0
    tool_calls: int = 0
    tool_errors: Counter = field(default_factory=Counter)
    tool_seconds: float = 0.0  # waiting on the environment
    generate_seconds: float = 0.0  # waiting on the engine
    cut: str | None = None  # the limit that ended it: max_turns or max_model_len
    turns_cut: int = 0  # turns that stopped at the per-turn limit (rl.max_new_tokens)
    mismatch: int | None = None  # first position where the template's rendering differs


def turn_seed(seed: int, turn: int) -> int:
    """The sampling seed of a later turn: fixed by the trajectory's seed and the turn's number,
    so a trajectory samples the same whatever else runs beside it."""
    return seed if turn == 0 else random.Random(f"{seed}:{turn}").randrange(2**30)


class TrajectoryRunner:
    """Runs trajectories for one environment on one engine; lives as long as the engine."""

    def __init__(self, agent: AgentConfig, tokenizer, turn: Callable[..., Awaitable[Turn]], max_model_len: int):
        self.agent, self.tok, self.turn, self.max_model_len = agent, tokenizer, turn, max_model_len
        self.env_cls = resolve_env(agent.env)
        self.chat = ChatTokens(tokenizer, getattr(self.env_cls, "tools", None))
        self.parser = ToolCallParser(agent.tool_parser, tokenizer)
        self.tools = ToolRunner(agent.env, agent.tool_workers, agent.tool_timeout_s, agent.max_tool_output_chars)
        self.threads = ThreadPoolExecutor(max_workers=agent.max_in_flight, thread_name_prefix="env")
        self.warned = False  # the first template mismatch is described in the log, later ones counted

    def prompt_messages(self, row: dict) -> list[dict]:
        head = [{"role": "system", "content": self.agent.system_prompt}] if self.agent.system_prompt else []
        context = row.get("context")
        if context:
            return (head if context[0]["role"] != "system" else []) + list(context)
        return head + [{"role": "user", "content": row["prompt"]}]

    async def _env(self, env, method: str, *args):
        """`env.<method>(*args)` off the event loop; a raw environment's call is limited to
        `agent.tool_timeout_s` (a ToolEnv's tool calls are limited one by one)."""
        fn = getattr(env, method)
        call = fn(*args) if asyncio.iscoroutinefunction(fn) else \
            asyncio.get_running_loop().run_in_executor(self.threads, fn, *args)
        if isinstance(env, ToolEnv):
            return await call
        return await asyncio.wait_for(call, self.agent.tool_timeout_s)

    async def run(self, row: dict, seed: int | None, sampling) -> Trajectory:
        """One episode; `sampling` (the engine's: temperature, stop strings, `max_new_tokens` per
        turn) goes to `turn` as it is."""
        max_new_tokens = sampling.max_new_tokens
        env = self.env_cls(row)
        if isinstance(env, ToolEnv):
            env.tool_runner = self.tools
        messages = self.prompt_messages(row) + list(await self._env(env, "reset") or [])
        written = list(messages)  # the conversation for the template check: sampled turns as written
        traj = Trajectory(prompt=self.chat.prompt_ids(messages), messages=messages)
        errors = traj.tool_errors
        for turn in range(self.agent.max_turns):
            room = self.max_model_len - len(traj.prompt) - len(traj.tokens)
            if room <= 0:
                traj.cut = "max_model_len"
                break
            t = time.perf_counter()
            out = await self.turn(traj.prompt + traj.tokens, None if seed is None else turn_seed(seed, turn),
                                  min(max_new_tokens, room), sampling)
            traj.generate_seconds += time.perf_counter() - t
            traj.tokens += out.ids
            traj.sampled += [True] * len(out.ids)
            traj.logprobs += out.logprobs
            traj.versions += out.pushes or [0] * len(out.ids)
            traj.turns += 1
            message = self.parser.parse(self.chat.assistant_text(out.ids))
            traj.tool_calls += len(message.get("tool_calls", ()))
            messages.append(message)
            written.append(as_written(message))
            if out.finish_reason == "length" and len(out.ids) < max_new_tokens:
                traj.cut = "max_model_len"  # the context is full: no room for a reply and another turn
                break
            # a turn cut at rl.max_new_tokens goes to the environment like any other (it decides)
            traj.turns_cut += out.finish_reason == "length"
            t = time.perf_counter()
            try:
                replies, reward, done = await self._env(env, "step", list(messages))
                replies = _checked(replies)
            except asyncio.TimeoutError:
                errors["env_timeout"] += 1
                replies, reward, done = [{"role": "tool", "content": (
                    f"error: the environment did not answer within {self.agent.tool_timeout_s:g} s")}], None, False
            except Exception as e:  # the environment's own failure: the model reads it, the run goes on
                errors["env_exception"] += 1
                replies, reward, done = [{"role": "tool", "content": f"error: {type(e).__name__}: {e}"}], None, False
            traj.tool_seconds += time.perf_counter() - t
            if reward is not None:
                traj.env_reward += float(reward)
            messages += replies
            written += replies
            if done:
                break
            if turn + 1 == self.agent.max_turns:
                traj.cut = "max_turns"
                break
            more = self.chat.reply_ids(replies, out.ids[-1] if out.ids else None)
            if len(traj.prompt) + len(traj.tokens) + len(more) >= self.max_model_len:
                traj.cut = "max_model_len"
                break
            traj.tokens += more
            traj.sampled += [False] * len(more)
            traj.logprobs += [0.0] * len(more)
            traj.versions += [0] * len(more)
        errors.update(getattr(env, "tool_errors", {}))
        traj.mismatch = self.chat.first_difference(written, traj.prompt + traj.tokens)
        if traj.mismatch is not None and not self.warned:
            self.warned = True
            ids = traj.prompt + traj.tokens
            print(f"[rlhf] warning: a trajectory's tokens differ from {self.chat.name}'s chat template rendering of its "
                  f"conversation at token {traj.mismatch} (around {self.tok.decode(ids[max(0, traj.mismatch - 8):traj.mismatch + 8])!r}); "
                  f"training uses the tokens as sampled; counted in agent/template_mismatch", flush=True)
        return traj

    def run_all(self, rows: list[dict], seeds: list[int | None], sampling) -> list[Trajectory]:
        """Every (row, seed) as a trajectory, at most `agent.max_in_flight` at once; in order."""

        async def main():
            gate = asyncio.Semaphore(self.agent.max_in_flight)

            async def one(row, seed):
                async with gate:
                    return await self.run(row, seed, sampling)

            return await asyncio.gather(*(one(r, s) for r, s in zip(rows, seeds)))

        return asyncio.run(main())

    def close(self) -> None:
        self.tools.close()
        self.threads.shutdown(wait=False, cancel_futures=True)


def _checked(replies) -> list[dict]:
    if not isinstance(replies, (list, tuple)) or any(
            not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str)
            for m in replies):
        raise TypeError(f"env.step must return a list of {{role, content}} messages first, got {replies!r:.100}")
    return list(replies)


# `stats` keys that count trajectories (engines' values add up); the rest are per-trajectory means
COUNTS = {"agent/template_mismatch"}


def stats(trajectories: list[Trajectory], seconds: float) -> dict[str, float]:
    """The `agent/*` metrics of one batch of trajectories."""
    n = max(len(trajectories), 1)
    errors = Counter()
    for t in trajectories:
        errors.update(t.tool_errors)
    context = sum(len(t.prompt) + len(t.tokens) for t in trajectories)
    sampled = sum(sum(t.sampled) for t in trajectories)
    out = {
        "agent/turns_mean": sum(t.turns for t in trajectories) / n,
        "agent/tool_calls_mean": sum(t.tool_calls for t in trajectories) / n,
        "agent/tool_errors_mean": sum(errors.values()) / n,
        "agent/tool_seconds_mean": sum(t.tool_seconds for t in trajectories) / n,
        "agent/generate_seconds_mean": sum(t.generate_seconds for t in trajectories) / n,
        "agent/cut_frac": sum(t.cut is not None for t in trajectories) / n,
        "agent/masked_token_share": 1 - sampled / max(context, 1),
        "agent/template_mismatch": float(sum(t.mismatch is not None for t in trajectories)),
        "agent/trajectories_per_s": len(trajectories) / max(seconds, 1e-9),
    }
    out.update({f"agent/tool_errors/{k}": v / n for k, v in errors.items()})
    out["agent/turns_cut_mean"] = sum(t.turns_cut for t in trajectories) / n
    for reason in ("max_turns", "max_model_len"):
        out[f"agent/cut/{reason}"] = sum(t.cut == reason for t in trajectories) / n
    return out


def to_batch(trajectories: list[Trajectory], group_ids: list[int], pad_id: int) -> TensorDict:
    """The batch layout of core.batch: each row its prompt then its tokens; `response_mask` is 1
    on sampled tokens only, `rollout_logprobs` their log-probs, `truncated` where a limit cut it,
    `env_rewards` the environment's summed rewards."""
    from core.batch import pack

    batch = pack([t.prompt for t in trajectories], [t.tokens for t in trajectories], pad_id)
    cols = batch["response_mask"].bool()
    batch["response_mask"][cols] = torch.tensor([float(s) for t in trajectories for s in t.sampled])
    batch["rollout_logprobs"] = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
    batch["rollout_logprobs"][cols] = torch.tensor([lp for t in trajectories for lp in t.logprobs], dtype=torch.float32)
    batch["group_ids"] = torch.tensor(group_ids)
    batch["truncated"] = torch.tensor([t.cut is not None for t in trajectories])
    batch["env_rewards"] = torch.tensor([t.env_reward for t in trajectories], dtype=torch.float32)
    batch["rollout_versions"] = torch.zeros(batch["input_ids"].shape, dtype=torch.long)
    batch["rollout_versions"][cols] = torch.tensor([v for t in trajectories for v in t.versions], dtype=torch.long)
    batch["rollout_versions"] *= batch["response_mask"].long()  # only sampled tokens have a policy
    return batch
