"""A Python tool for math word problems (GSM8K-style rows): the model's code runs in the code
sandbox (rewards/sandbox.py: its own process, user and network namespace, resource limits) and
the tool returns what it printed."""

from __future__ import annotations

from agents.base import ToolEnv, tool_schema


class PythonEnv(ToolEnv):
    tools = [tool_schema("python", "Run a Python program and return what it prints (standard output and errors).",
                         {"code": "the program; print the values you need"})]

    @staticmethod
    def python(code: str) -> str:
        from rewards.sandbox import SandboxLimits, run_python

        result = run_python(str(code), SandboxLimits(timeout_s=5.0))
        out = (result.stdout + result.stderr).strip()
        return out if result.status == "ok" else f"{result.status}: {out[-2000:]}"
