"""Environments for the agent benchmarks."""

import time

from agents.base import ToolEnv, tool_schema


class SleepyTool(ToolEnv):
    """Whatever the model writes, each of its first `CALLS` turns calls a tool that sleeps
    `SECONDS` (a slow API, a test suite), then the episode ends: the rollout layer's concurrency
    is all that stands between the tools' total time and the wall time."""

    CALLS, SECONDS = 3, 1.0
    tools = [tool_schema("wait", "Wait a moment and answer.", {"x": "anything"})]

    @staticmethod
    def wait(x):
        time.sleep(SleepyTool.SECONDS)
        return "done"

    def step(self, messages):
        turn = sum(m["role"] == "assistant" for m in messages)
        if turn > self.CALLS:
            return [], 0.0, True
        return [{"role": "tool", "name": "wait", "content": self.call({"function": {"name": "wait", "arguments": {"x": turn}}})}], None, False
