"""Environments for the tests (selected by file path): tools that fail in every way a tool can,
and a scripted environment that plants known tokens in the context."""

import time

from agents.base import ToolEnv, tool_schema

PLANT = "PLANTED-ENV-TEXT 4242"


class FaultyTools(ToolEnv):
    tools = [tool_schema(name, f"a tool that {what}", {"x": "anything"}) for name, what in (
        ("fine", "answers"), ("raises", "raises"), ("hangs", "sleeps past its timeout"), ("huge", "returns 10 MB"),
        ("number", "returns an int"), ("sleepy", "sleeps one second"))]

    @staticmethod
    def fine(x):
        return f"ok {x}"

    @staticmethod
    def raises(x):
        raise ValueError("this tool always fails")

    @staticmethod
    def hangs(x):
        time.sleep(600)
        return "never"

    @staticmethod
    def huge(x):
        return "y" * (10 << 20)

    @staticmethod
    def number(x):
        return 42

    @staticmethod
    def sleepy(x):
        time.sleep(1.0)
        return "slept"


class CallsOneTool(FaultyTools):
    """Whatever the model writes, its first turn calls the tool the row names (so a random model
    exercises every failure); the second turn ends the episode with reward 1."""

    def step(self, messages):
        if sum(m["role"] == "assistant" for m in messages) > 1:
            return [], 1.0, True
        name = self.row["answer"]
        return [{"role": "tool", "name": name, "content": self.call({"function": {"name": name, "arguments": {"x": 4}}})}], None, False


class Planted:
    """Not a ToolEnv: answers every assistant turn with a user message holding PLANT, ends after
    three assistant turns with reward 0.5, and starts with a system message from the row."""

    tools: list = []

    def __init__(self, row):
        self.row = row

    def reset(self):
        return [{"role": "user", "content": f"again {self.row['answer']}"}]

    def step(self, messages):
        turns = sum(m["role"] == "assistant" for m in messages)
        if turns >= 3:
            return [], 0.5, True
        return [{"role": "user", "content": PLANT}], 0.25, False


class Sleepy(ToolEnv):
    """Three calls of a tool that sleeps one second, whatever the model writes (the concurrency benchmark)."""

    tools = FaultyTools.tools

    sleepy = staticmethod(FaultyTools.sleepy)

    def step(self, messages):
        turn = sum(m["role"] == "assistant" for m in messages)
        if turn > 3:
            return [], 0.0, True
        return [{"role": "tool", "name": "sleepy", "content": self.call({"function": {"name": "sleepy", "arguments": {"x": 1}}})}], None, False
