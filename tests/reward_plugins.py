"""Reward plugins for the tests, good and deliberately broken (selected by file path)."""

import math
import os
import signal
import time


def good(prompt, response, ground_truth, **extra):
    return {"reward": float(response.strip() == str(ground_truth)), "length": float(len(response))}


def raises(prompt, response, ground_truth, **extra):
    raise ValueError("this plugin always fails")


def sleeps(prompt, response, ground_truth, **extra):
    time.sleep(60)
    return 1.0


def nan(prompt, response, ground_truth, **extra):
    return math.nan


def string(prompt, response, ground_truth, **extra):
    return "1.0"


def suicide(prompt, response, ground_truth, **extra):
    os.kill(os.getpid(), signal.SIGKILL)


def flaky(prompt, response, ground_truth, **extra):
    """Fails on prompts "a+b=" whose a is even, scores the rest exactly."""
    if int(prompt.split("+")[0]) % 2 == 0:
        raise RuntimeError(f"flaky plugin failed on {prompt!r}")
    return float(response.strip() == str(ground_truth))


def by_extra(prompt, response, ground_truth, *, parity, bonus=0.0, **extra):
    """Uses a dataset column (`parity`, from data.extra_keys) and a config kwarg (`bonus`)."""
    return float(parity == "odd") + bonus


def strict(prompt, response, ground_truth):
    """Written before multi-turn rollouts: no **extra."""
    return 1.0


def turns(prompt, response, ground_truth, messages=None):
    """Counts the assistant turns of a multi-turn conversation (0 without one)."""
    return float(sum(m["role"] == "assistant" for m in messages or []))


def counts_extra(prompt, response, ground_truth, **extra):
    return float(len(extra.get("messages", [])))
