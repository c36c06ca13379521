"""Training faults that once gave silent wrong results or raw tracebacks (issue 11).

Resume across an accumulation window, sequence lengths past the position table, runs in which
no example keeps a completion token, a save that meets a full disk, a damaged trainer state,
and arguments that cannot run (a missing GPU, an unusable --work_dir).
"""
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from backends import training_backend as backend_class
from shared.train.trainer import TrainingError, train

from test_training import assert_same_result, make_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backend", ["torch", "jittor"])
def test_resume_is_exact_when_save_interval_is_not_a_multiple_of_grad_acc(tmp_path, encoded,
                                                                          backend):
    """--grad_acc 2 --save_interval 5: the step-5 checkpoint would fall inside an accumulation
    window. A run that dies at step 9 and is resumed ends bit-identical to one that never
    stopped (so does one whose later checkpoints were deleted)."""
    extra = ["--save_interval", "5", "--max_step", "12"]
    train(make_args(encoded, tmp_path / "full", backend, extra), backend_class(backend))

    def crash(step):
        if step == 9:
            raise RuntimeError("simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_args(encoded, tmp_path / "resumed", backend, extra), backend_class(backend),
              on_step=crash)
    train(make_args(encoded, tmp_path / "resumed", backend, extra + ["--resume"]),
          backend_class(backend))
    assert_same_result(tmp_path / "full", tmp_path / "resumed")
    # a copy of the finished run with its later checkpoints deleted resumes from the first (6)
    shutil.copytree(tmp_path / "full", tmp_path / "copy")
    for name in os.listdir(tmp_path / "copy"):
        if name.startswith(("model.", "trainer_state.")) and int(name.split(".")[1]) > 6:
            os.remove(tmp_path / "copy" / name)
    train(make_args(encoded, tmp_path / "copy", backend, extra + ["--resume"]),
          backend_class(backend))
    assert_same_result(tmp_path / "full", tmp_path / "copy")
    saved = sorted(int(name.split(".")[1]) for name in os.listdir(tmp_path / "full")
                   if name.startswith("trainer_state."))
    assert all(step % 2 == 0 for step in saved), saved  # only at update boundaries


# ------------------------------------------------------------------ arguments that cannot run
def ft_argv(encoded, work_dir, *extra):
    return ["--backend", "torch", "--device", "cpu", "--train_data", str(encoded / "train.jsonl"),
            "--valid_data", str(encoded / "valid.jsonl"), "--n_embd", "32", "--n_layer", "1",
            "--n_head", "4", "--max_step", "4", "--work_dir", str(work_dir), "--no_progress",
            *extra]


def run_script(script, argv, **kw):
    return subprocess.run([sys.executable, f"scripts/{script}", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("bad, message", [
    (["--n_embd", "0"], "--n_embd must be positive, got 0"),
    (["--n_layer", "0"], "--n_layer must be positive, got 0"),
    (["--n_head", "-2"], "--n_head must be positive, got -2"),
    (["--n_embd", "30"], "--n_embd 30 is not divisible by --n_head 4"),
    (["--seq_len", "2048"], "--seq_len 2048 is longer than the model's 1024 positions"),
])
def test_model_shape_and_length_are_checked_naming_the_flag(tmp_path, encoded, bad, message):
    from shared.runtime.arg_types import ArgumentProblem
    from shared.train.train_args import build_parser, validate
    args = build_parser().parse_args(ft_argv(encoded, tmp_path / "w", *bad))
    with pytest.raises(ArgumentProblem) as info:
        validate(args)
    assert message in str(info.value)


def test_card_sizes_are_overridden_only_by_given_values():
    from shared.model.config import GPT2Config
    assert GPT2Config.from_model_card("gpt2.sm", n_layer=2).n_embd == 768
    with pytest.raises(ValueError, match="n_embd must be positive"):
        GPT2Config.from_model_card("gpt2.sm", n_embd=0)


def test_gpt2_ft_long_seq_len_fails_before_any_work(tmp_path, encoded):
    proc = run_script("gpt2_ft.py", ft_argv(encoded, tmp_path / "w", "--seq_len", "2048"))
    assert proc.returncode == 2 and "--seq_len 2048" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "w")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("backend", ["torch", "jittor"])
def test_device_cuda_without_gpu_fails_before_the_work_dir_is_made(tmp_path, encoded, backend):
    argv = ft_argv(encoded, tmp_path / "w", "--device", "cuda")
    argv[1] = backend
    proc = run_script("gpt2_ft.py", argv)
    assert proc.returncode == 2, proc.stderr
    assert "--device cuda" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "w")


def test_work_dir_under_a_regular_file_fails_before_any_work(tmp_path, encoded):
    (tmp_path / "file").write_text("x")
    proc = run_script("gpt2_ft.py", ft_argv(encoded, tmp_path / "file" / "w"))
    assert proc.returncode == 2 and "--work_dir" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_work_dir_on_a_read_only_file_system_is_a_problem(tmp_path, monkeypatch):
    from shared.runtime import preflight

    class ReadOnly:
        f_flag = os.ST_RDONLY
    monkeypatch.setattr(preflight.os, "statvfs", lambda path: ReadOnly())
    problems = preflight.output_dir_problems("--work_dir", str(tmp_path / "new"))
    assert problems and "read-only" in problems[0]


# --------------------------------------------------------------- completions cut by --seq_len
def test_a_run_where_no_example_keeps_a_completion_token_is_an_error(tmp_path, encoded):
    # every E2E context is longer than 12 tokens, so --seq_len 12 cuts every completion away
    with pytest.raises(TrainingError, match="no example keeps a completion token"):
        train(make_args(encoded, tmp_path / "w", extra=["--seq_len", "12"]), backend_class("torch"))
    assert not os.path.exists(tmp_path / "w" / "model.4.pt")


def test_training_batches_are_checked_on_the_host_before_the_device():
    from shared.text.batching import check_batch
    from shared.model.config import GPT2Config
    config = GPT2Config(n_embd=8, n_layer=1, n_head=2, n_positions=4, n_ctx=4)
    check_batch({"input": np.zeros((2, 4), dtype=np.int64)}, config)
    with pytest.raises(ValueError, match="5 positions"):
        check_batch({"input": np.zeros((2, 5), dtype=np.int64)}, config)
    with pytest.raises(ValueError, match="token id -1"):
        check_batch({"input": np.array([[0, -1]])}, config)


def test_a_split_where_most_completions_are_cut_gets_a_loud_warning():
    from shared.text.batching import FTDataset
    samples = [([1] * 10, [2, 3]), ([1] * 10, [2]), ([1] * 10, [2, 3, 4]), ([1] * 2, [5, 6])]
    report = FTDataset(samples, batch_size=2, seq_len=8, source="x.jsonl").completion_report()
    assert report.startswith("WARNING") and "3 of 4" in report and "x.jsonl:1" in report
    assert FTDataset(samples[-1:], batch_size=2, seq_len=8).completion_report() == ""


# ------------------------------------------------------------------------ faults at a save
def test_disk_full_at_a_save_is_one_line_naming_the_file_and_how_to_resume(tmp_path, encoded,
                                                                        monkeypatch):
    import shared.runtime.atomic

    real_fsync = os.fsync

    def no_space_for_checkpoints(fd):  # the disk fills up when the first checkpoint is written
        if ".model." in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(shared.runtime.atomic.os, "fsync", no_space_for_checkpoints)
    with pytest.raises(TrainingError) as info:
        train(make_args(encoded, tmp_path / "w"), backend_class("torch"))
    message = str(info.value)
    assert "model.4.pt" in message and "No space left on device" in message
    assert "--resume" in message and "\n" not in message
    assert not [n for n in os.listdir(tmp_path / "w") if n.endswith(".tmp")]


def test_torch_save_failing_on_a_full_disk_names_the_file(tmp_path, encoded, monkeypatch):
    """torch.save reports a full disk as RuntimeError('... unexpected pos 2432 vs 2326')."""
    import torch

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 2432 vs 2326")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainingError, match=r"cannot write .*model\.4\.pt at step 4: .*--resume"):
        train(make_args(encoded, tmp_path / "w"), backend_class("torch"))


def test_truncated_trainer_state_names_the_file(tmp_path, encoded):
    def crash(step):
        if step == 5:
            raise RuntimeError("stop")
    with pytest.raises(RuntimeError):
        train(make_args(encoded, tmp_path / "w"), backend_class("torch"), on_step=crash)
    state = tmp_path / "w" / "trainer_state.4.npz"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(TrainingError, match=r"trainer_state\.4\.npz"):
        train(make_args(encoded, tmp_path / "w", extra=["--resume"]), backend_class("torch"))


# ---------------------------------------------------------------- the Jittor position table
@pytest.mark.parametrize("backend", ["torch", "jittor"])
def test_models_refuse_positions_and_ids_outside_their_tables(backend):
    from shared.model.config import GPT2Config
    config = GPT2Config(n_embd=8, n_layer=1, n_head=2, n_positions=6, n_ctx=6)
    if backend == "torch":
        import torch
        from torch_impl import GPT2LMModel
        to_input = torch.from_numpy
    else:
        from jittor_impl import GPT2LMModel
        from jittor_impl.runtime import jt
        to_input = jt.array
    model = GPT2LMModel(config, seed=0)
    ok = np.array([[1, 2, 3, 4, 5, 6]], dtype=np.int64)
    model(to_input(ok))
    with pytest.raises(ValueError, match="7 positions exceeds the model's 6"):
        model(to_input(np.array([[1, 2, 3, 4, 5, 6, 7]], dtype=np.int64)))
    too_big = np.array([[1, 50257]], dtype=np.int64)
    if backend == "torch":  # torch's own lookup checks ids
        with pytest.raises(IndexError):
            model(to_input(too_big))
    else:  # ids known on the host are checked before Jittor's unchecked lookup
        with pytest.raises(ValueError, match="token id 50257"):
            model(too_big)
