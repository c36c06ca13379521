"""Numeric flags are range-checked where they are parsed (shared/runtime/arg_types.py): `--temperature nan`
once emptied every response, `--limit -3` silently dropped entries. A bad value stops with one line
naming the flag, exit status 2, before any work; every script's numeric flags use the types."""
import argparse
import importlib.util
import math
import os
import subprocess
import sys
from unittest import mock

import pytest

from shared.runtime import arg_types
from shared.decode.sampling import SamplingSettings, filtered_probabilities

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name):
    """A module of scripts/ (not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(f"script_{name}",
                                                  os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind, good, bad", [
    (arg_types.positive_int, {"1": 1, "12": 12}, ["0", "-3", "1.5", "x", ""]),
    (arg_types.non_negative_int, {"0": 0, "7": 7}, ["-1", "nan"]),
    (arg_types.finite_float, {"-2.5": -2.5, "0": 0.0}, ["nan", "inf", "-inf", "x"]),
    (arg_types.temperature, {"0": 0.0, "0.7": 0.7}, ["nan", "-1", "inf", "-0.1"]),
    (arg_types.positive_float, {"1e-5": 1e-5}, ["0", "-1e-5", "nan"]),
    (arg_types.top_p_mass, {"1": 1.0, "0.9": 0.9}, ["0", "1.01", "nan"]),
    (arg_types.probability, {"0": 0.0, "1": 1.0}, ["-0.01", "1.5", "nan"]),
    (arg_types.fraction_below_one, {"0": 0.0, "0.98": 0.98}, ["1", "nan"]),
    (arg_types.open_fraction, {"0.1": 0.1}, ["0", "1", "nan"]),
])
def test_types_accept_their_range_only(kind, good, bad):
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            kind(text)


def test_messages_say_the_range():
    with pytest.raises(argparse.ArgumentTypeError) as info:
        arg_types.temperature("nan")
    assert str(info.value) == "must be a finite number >= 0, got 'nan'"
    with pytest.raises(argparse.ArgumentTypeError) as info:
        arg_types.top_p_mass("0")
    assert str(info.value) == "must be a finite number in (0, 1], got '0'"
    with pytest.raises(argparse.ArgumentTypeError) as info:
        arg_types.positive_int("-3")
    assert str(info.value) == "must be an integer >= 1, got '-3'"


@pytest.mark.parametrize("temperature", [math.nan, -1.0, math.inf])
def test_sampling_settings_refuse_a_temperature_without_meaning(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        SamplingSettings(temperature=temperature)
    probs = filtered_probabilities([0.0, 2.0, 1.0], SamplingSettings(temperature=0.0))
    assert probs.tolist() == [0.0, 1.0, 0.0]


def parsers():
    """(name, parser) for every entry point with numeric flags."""
    from shared.tasks.classify_task import build_classify_parser
    from shared.pipeline.instruct_pipeline import build_parser as instruct_pipeline
    from shared.tasks.instruct_task import build_instruct_parser
    from shared.tasks.pretrain_task import build_pretrain_parser
    from shared.pipeline.task_pipelines import build_parser as task_pipeline
    from shared.train.train_args import build_parser
    out = [("gpt2_ft", build_parser()), ("instruct_ft", build_instruct_parser()),
           ("pretrain", build_pretrain_parser()), ("classify_ft", build_classify_parser()),
           ("work.sh --task instruct", instruct_pipeline()),
           ("work.sh --task pretrain", task_pipeline("pretrain")),
           ("work.sh --task classify", task_pipeline("classify"))]
    for name in ("chat", "generate", "gpt2_beam", "beam_divergence", "classify",
                 "check_alignment", "diff_layers", "metric_intervals", "run_pipeline"):
        out.append((name, script(name).build_parser()))
    for name in ("benchmark", "compare_runs"):  # these build their parser inside parse_args
        out.append((name, parser_of(script(name).parse_args)))
    return out


def parser_of(parse_args):
    """The parser that a script's `parse_args(argv)` builds, caught as it starts parsing."""
    class Caught(Exception):
        pass

    def catch(parser, *args, **kwargs):
        raise Caught(parser)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch):
        try:
            parse_args([])
        except Caught as caught:
            return caught.args[0]
    raise AssertionError(f"{parse_args} parsed nothing")


# Integer flags checked after parsing instead: the model shape against the model card
# (shared/model/config.py shape_flag_problems, with its own messages), and torch.distributed's
# --local_rank, accepted for compatibility and unused.
CHECKED_ELSEWHERE = {"n_embd", "n_layer", "n_head", "local_rank"}


def test_every_numeric_flag_has_a_range_checked_type():
    unchecked = [f"{name} --{action.dest}" for name, parser in parsers()
                 for action in parser._actions
                 if action.type in (int, float) and action.dest not in CHECKED_ELSEWHERE]
    assert unchecked == []


@pytest.mark.parametrize("name, argv, flag, message", [
    ("generate", ["--temperature", "nan"], "--temperature", "must be a finite number >= 0, got 'nan'"),
    ("generate", ["--num_samples", "0"], "--num_samples", "must be an integer >= 1, got '0'"),
    ("instruct_ft", ["--temperature", "nan"], "--temperature",
     "must be a finite number >= 0, got 'nan'"),
    ("instruct_ft", ["--limit", "-3"], "--limit", "must be an integer >= 1, got '-3'"),
    ("instruct_ft", ["--eval_limit", "-1"], "--eval_limit", "must be an integer >= 1, got '-1'"),
    ("instruct_ft", ["--top_p", "1.5"], "--top_p", "must be a finite number in (0, 1], got '1.5'"),
    ("pretrain", ["--temperature", "-1"], "--temperature", "must be a finite number >= 0, got '-1'"),
    ("pretrain", ["--sample_tokens", "0"], "--sample_tokens", "must be an integer >= 1, got '0'"),
    ("gpt2_ft", ["--lr", "nan"], "--lr", "must be a finite number > 0, got 'nan'"),
    ("gpt2_ft", ["--clip", "-1"], "--clip", "must be a finite number >= 0, got '-1'"),
    ("gpt2_ft", ["--adam_beta2", "1"], "--adam_beta2", "must be a finite number in [0, 1), got '1'"),
    ("gpt2_ft", ["--random_seed", "-1"], "--random_seed", "must be an integer >= 0, got '-1'"),
    ("gpt2_ft", ["--max_step", "0"], "--max_step", "must be an integer >= 1, got '0'"),
    ("gpt2_beam", ["--length_penalty", "nan"], "--length_penalty",
     "must be a finite number, got 'nan'"),
    ("run_pipeline", ["--test_limit", "-1"], "--test_limit", "must be an integer >= 1, got '-1'"),
    ("run_pipeline", ["--lr", "inf"], "--lr", "must be a finite number > 0, got 'inf'"),
    ("work.sh --task instruct", ["--eval_limit", "-1"], "--eval_limit",
     "must be an integer >= 1, got '-1'"),
    ("work.sh --task instruct", ["--limit", "-3"], "--limit", "must be an integer >= 1, got '-3'"),
    ("work.sh --task pretrain", ["--temperature", "nan"], "--temperature",
     "must be a finite number >= 0, got 'nan'"),
    ("work.sh --task pretrain", ["--top_k", "-1"], "--top_k", "must be an integer >= 0, got '-1'"),
])
def test_bad_values_stop_at_parse_naming_the_flag(capsys, name, argv, flag, message):
    parser = dict(parsers())[name]
    argv = [f"{argv[0]}={argv[1]}"]  # `--flag=-1`: argparse would take a bare -1 for a flag
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: argument {flag}: {message}")


def test_work_sh_refuses_a_negative_eval_limit_before_any_work(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "work.sh"), "--task", "instruct",
                           "--runs_dir", str(tmp_path / "runs"), "--eval_limit=-1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == ("work.sh --task instruct: error: argument "
                                            "--eval_limit: must be an integer >= 1, got '-1'")
    assert not os.path.exists(tmp_path / "runs")
