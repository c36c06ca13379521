"""Validated argparse types for numeric flags, shared by every script and pipeline.

`type=positive_int` and the like reject a bad value where the flags are parsed, before any work,
with argparse's one-line usage error naming the flag (exit status 2), e.g.
    error: argument --temperature: must be a finite number >= 0, got 'nan'
Floats must be finite: `nan` compares false with every bound, so a check written as
`if x <= 0: refuse` lets it through (and NaN sampling probabilities then draw end-of-text).
Backend-free (no torch/jittor import).
"""
from __future__ import annotations

import argparse
import math


class ArgumentProblem(ValueError):
    """Flags that parse one by one but not together: the script's usage error (status 2)."""


def _int(text) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def int_at_least(low: int):
    """An argparse type: an integer >= low."""
    def parse(text):
        value = _int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"int_at_least_{low}"
    return parse


def float_in(low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite float within [low, high] (either end open or absent)."""
    def parse(text):
        value = _float(text)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:  # NaN passes every bound
            raise argparse.ArgumentTypeError(f"must be a finite number{describe()}, got {text!r}")
        return value

    def describe():
        if low is not None and high is not None:
            return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        if low is not None:
            return f" {'>' if low_open else '>='} {low:g}"
        if high is not None:
            return f" {'<' if high_open else '<='} {high:g}"
        return ""
    parse.__name__ = "finite_float"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
seed_int = int_at_least(0)  # numpy's generators take non-negative seeds only
finite_float = float_in()
positive_float = float_in(0.0, low_open=True)
non_negative_float = float_in(0.0)
probability = float_in(0.0, 1.0)
fraction_below_one = float_in(0.0, 1.0, high_open=True)  # [0, 1): dropout, label smoothing, betas
open_fraction = float_in(0.0, 1.0, low_open=True, high_open=True)  # (0, 1): held-out shares
top_p_mass = float_in(0.0, 1.0, low_open=True)  # (0, 1]: nucleus mass, 1 turns it off
temperature = non_negative_float  # 0: greedy


# The pipelines' preset settings (work.sh --KEY VALUE overrides): integers are positive unless
# named here, floats finite within the range named here.
NON_NEGATIVE_INT_SETTINGS = ("warmup_step", "lora_dim", "top_k", "no_repeat_ngram_size",
                             "sample_every", "eos_token_id", "divergence_queries", "min_length")
FLOAT_SETTINGS = {"lr": positive_float, "base_lr": positive_float,
                  "weight_decay": non_negative_float, "clip": non_negative_float,
                  "base_clip": non_negative_float,
                  "label_smooth": fraction_below_one, "lora_dropout": fraction_below_one,
                  "valid_fraction": open_fraction, "temperature": temperature,
                  "top_p": top_p_mass, "repetition_penalty": positive_float,
                  "sft_lr": positive_float, "reward_lr": positive_float,
                  "dpo_lr": positive_float, "beta": positive_float,
                  "ppo_lr": positive_float, "kl_coef": non_negative_float,
                  "target_kl": positive_float, "vf_coef": non_negative_float}


def setting_type(key: str, kind: type):
    """The validated argparse type of the preset setting `key`, whose values are of `kind`."""
    if kind is bool or kind is str:
        return kind
    if kind is int:
        return non_negative_int if key in NON_NEGATIVE_INT_SETTINGS else positive_int
    if kind is float:
        return FLOAT_SETTINGS.get(key, finite_float)
    return kind
