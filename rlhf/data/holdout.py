"""The SFT rows held out for the eval loss (`sft.eval_fraction`): drawn by seed, so a restarted
or resumed run holds out the same rows, and never trained on in SFT (RL stages still use them)."""

from __future__ import annotations

import random

from rlhf.data.rows import DataError, Row


def hold_out(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(training rows, held-out rows): round(fraction x len(rows)) rows drawn by `seed` are held
    out; both keep the rows' order. A fraction that leaves either side empty is an error."""
    if not fraction or not rows:  # no rows: the caller says that none fits
        return rows, []
    n, k = len(rows), round(fraction * len(rows))
    if k == 0:
        raise DataError(f"sft.eval_fraction={fraction} holds out no row of the stage's {n} SFT rows (it rounds to "
                        f"0); raise it to at least {1 / n:.3g} to hold out one row, or set 0 for no eval loss")
    if k == n:
        raise DataError(f"sft.eval_fraction={fraction} holds out all {n} of the stage's SFT rows, leaving none to "
                        f"train on; lower it to at most {(n - 1) / n:.3g} (one training row)")
    held = set(random.Random(f"{seed}:sft-eval").sample(range(n), k))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
