"""gpt2_ft.py's arguments: what cannot run fails before any work, naming the flag."""
import pytest

from shared.runtime.arg_types import ArgumentProblem
from shared.train.train_args import build_parser, validate


@pytest.fixture
def data_files(tmp_path):
    for name in ("train.jsonl", "valid.jsonl"):
        (tmp_path / name).write_text('{"context": [1], "completion": [2]}\n')
    return tmp_path


def parse(data_files, *extra):
    return build_parser().parse_args(["--train_data", str(data_files / "train.jsonl"),
                                      "--valid_data", str(data_files / "valid.jsonl"),
                                      "--max_step", "2", "--device", "cpu", *extra])


@pytest.mark.parametrize("extra, message", [
    (("--backend", "jittor", "--compile"), "--compile exists for the torch backend only"),
    (("--backend", "torch", "--precision", "bf16"), "--precision bf16 needs --device cuda"),
])
def test_impossible_combinations_are_named(data_files, extra, message):
    with pytest.raises(ArgumentProblem, match=message):
        validate(parse(data_files, *extra))


@pytest.mark.parametrize("attn", ["math", "sdpa"])
def test_both_backends_take_both_attention_paths(data_files, attn):
    for backend in ("torch", "jittor"):  # Jittor's fused path is its flash kernel
        assert validate(parse(data_files, "--backend", backend, "--attn", attn)).attn == attn


def test_torch_compile_is_accepted(data_files):
    assert validate(parse(data_files, "--backend", "torch", "--compile")).compile


def test_a_compile_mode_implies_compile(data_files):
    args = validate(parse(data_files, "--backend", "torch", "--compile_mode", "max-autotune"))
    assert args.compile and args.compile_mode == "max-autotune"
    assert validate(parse(data_files, "--backend", "torch")).compile_mode is None


def test_a_compile_mode_for_jittor_names_the_flag(data_files):
    with pytest.raises(ArgumentProblem, match="--compile_mode exists for the torch backend only"):
        validate(parse(data_files, "--backend", "jittor", "--compile_mode", "default"))
