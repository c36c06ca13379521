"""Per-step seeds: each training step reseeds the framework RNG from (seed, step).

Then dropout with a framework's own RNG is still reproducible across an interruption: a resumed
run draws the same masks at step k as an uninterrupted one, with no RNG state to save.
"""


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step)) % (2**31 - 1)
