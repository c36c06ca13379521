"""SIGTERM and SIGHUP stop the long scripts cleanly: training saves at the next update and
resumes bit-identically, beam search leaves no half-written output; a process forked while the
handlers are set (Jittor's compiler pool) still dies on SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shared.model.checkpoint import read_checkpoint
from shared.runtime.stop_signals import StopSignal, raise_on_stop_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def test_stop_signal_raises_in_the_process_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopSignal) as err:
        with raise_on_stop_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)  # the handler runs at once; never reached
    assert err.value.exit_code == 129 and "SIGHUP" in str(err.value)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_child_forked_under_the_handlers_dies_on_sigterm_as_before():
    read_end, write_end = os.pipe()
    with raise_on_stop_signals():
        pid = os.fork()
        if pid == 0:  # the child: a pool worker waiting for work
            try:
                os.write(write_end, b"x")
                time.sleep(30)
            finally:
                os._exit(7)  # reached only if SIGTERM raised instead of ending the process
        os.read(read_end, 1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    os.close(read_end)
    os.close(write_end)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def wait_for_line(proc, prefix, timeout=300):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return seen
    proc.kill()
    raise AssertionError(f"no line starting with {prefix!r}; got:\n{''.join(seen)[-3000:]}")


# ------------------------------------------------------------------------------ beam search
def test_beam_search_stopped_by_sigterm_leaves_no_output(tmp_path, e2e_dir, vocab_dir):
    from shared.model.checkpoint import save_checkpoint
    from shared.model.config import GPT2Config
    from shared.text.e2e_data import prepare_e2e
    from shared.model.params import init_state_dict
    data = tmp_path / "data"
    prepare_e2e(e2e_dir, str(data), vocab_dir=vocab_dir, splits=("test",))
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2)
    save_checkpoint(tmp_path / "model.safetensors", init_state_dict(config, seed=1))
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "scripts/gpt2_beam.py", "--backend", "torch", "--device", "cpu",
         "--data", str(data / "test.jsonl"), "--n_embd", "32", "--n_layer", "1", "--n_head", "2",
         "--init_checkpoint", str(tmp_path / "model.safetensors"), "--batch_size", "1",
         "--seq_len", "96", "--eval_len", "6", "--beam", "2", "--work_dir", str(work),
         "--output_file", "p.jsonl", "--no_progress"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_line(proc, "beam search:")  # thousands of single-query searches follow
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "stopped by SIGTERM: no output was left half-written; rerun the same command" in out
    assert not os.path.exists(work) or os.listdir(work) == []


# --------------------------------------------------------------------------------- training
def ft_argv(encoded, work_dir, extra=()):
    return [sys.executable, "scripts/gpt2_ft.py", "--backend", "torch", "--device", "cpu",
            "--train_data", str(encoded / "train.jsonl"), "--valid_data", str(encoded / "valid.jsonl"),
            "--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--lora_dim", "4",
            "--lora_alpha", "16", "--lora_dropout", "0.1", "--train_batch_size", "4",
            "--valid_batch_size", "8", "--seq_len", "64", "--max_step", "12", "--warmup_step", "2",
            "--lr", "0.01", "--grad_acc", "2", "--clip", "1.0", "--log_interval", "3",
            "--eval_interval", "6", "--save_interval", "8", "--max_eval_batches", "3",
            "--random_seed", "5", "--work_dir", str(work_dir), "--no_progress", *extra]


def training_result(work_dir):
    with open(work_dir / "train_log.jsonl") as f:
        log = [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "elapsed_s")}
               for line in f]
    return log, read_checkpoint(work_dir / "model.12.pt")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, encoded):
    work = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(ft_argv(encoded, work), cwd=ROOT, env=ENV, check=True, capture_output=True,
                   timeout=600)
    return training_result(work)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_every_stop_signal_asks_the_training_loop_to_save_and_stop(sig):
    from shared.train.trainer import StopRequest
    with StopRequest() as stop:
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signum == sig


def test_gpt2_ft_saves_on_sigterm_and_resumes_bit_identically(tmp_path, encoded, uninterrupted):
    sig = signal.SIGTERM
    work = tmp_path / "work"
    proc = subprocess.Popen(ft_argv(encoded, work), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_line(proc, "| epoch   1 step        3")  # mid-accumulation: grad_acc is 2
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, out
    assert f"{sig.name}: finishing the current update" in out
    assert "rerun with --resume to continue" in out
    step = int(out.split("stopped at step ")[1].split(";")[0])
    assert step % 2 == 0 and 4 <= step < 12  # at an update boundary, before the end
    assert os.path.isfile(work / f"model.{step}.pt") and not os.path.exists(work / "model.12.pt")
    assert not os.path.exists(work / "run.lock")  # the claim on work_dir was released
    subprocess.run(ft_argv(encoded, work, ["--resume"]), cwd=ROOT, env=ENV, check=True,
                   capture_output=True, timeout=600)
    log, weights = training_result(work)
    ref_log, ref_weights = uninterrupted
    assert log == ref_log
    assert sorted(weights) == sorted(ref_weights)
    for name in weights:
        np.testing.assert_array_equal(weights[name], ref_weights[name], err_msg=name)


def test_resuming_a_finished_training_keeps_it(tmp_path, encoded):
    """A pipeline rerun after a stop resumes every backend's training, also one that finished."""
    from backends import training_backend
    from shared.train.train_args import build_parser
    from shared.train.trainer import train
    argv = ft_argv(encoded, tmp_path / "run", ["--max_step", "2", "--warmup_step", "1",
                                               "--log_interval", "1", "--eval_interval", "2"])[2:]
    first = train(build_parser().parse_args(argv), training_backend("torch"))
    log_before = (tmp_path / "run" / "train_log.jsonl").read_text()
    again = train(build_parser().parse_args(argv + ["--resume"]), training_backend("torch"))
    assert again == first
    assert (tmp_path / "run" / "train_log.jsonl").read_text() == log_before
