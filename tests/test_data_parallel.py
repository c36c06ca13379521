"""Training on several processes equals one process: under the real torchrun (torch DDP, gloo)
and the real mpirun (Jittor's MPI), 2 processes at batch b against 1 at batch 2b give the same
loss at every step and the same LoRA weights up to summation order; SIGTERM to one rank stops
every rank at the next update with one checkpoint, and 1 process resumes it to the uninterrupted
2-process result. The rank arithmetic (shard, loss shares, dropout rows) is checked on its own."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shared.model.checkpoint import read_checkpoint
from shared.train.dropout import SharedDropout
from shared.train.data_parallel import (DataParallelError, Processes, detect_processes,
                                        dropout_rows, loss_normaliser, loss_share, setup_processes,
                                        shard_rows)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONUNBUFFERED="1")
TOLERANCE = 1e-6  # relative: the processes differ in summation order only
MAX_STEP = 12


# ------------------------------------------------------------------------ rank arithmetic
def test_launchers_are_read_from_their_environment_variables():
    assert detect_processes({}) == Processes()
    assert detect_processes({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == \
        Processes(1, 2, 1, "torchrun")
    assert detect_processes({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4",
                             "OMPI_COMM_WORLD_LOCAL_RANK": "0"}) == Processes(0, 4, 0, "mpirun")
    with pytest.raises(DataParallelError, match="RANK=2 is not a rank of WORLD_SIZE=2"):
        detect_processes({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(DataParallelError, match="WORLD_SIZE='two' is not an integer"):
        detect_processes({"WORLD_SIZE": "two"})
    with pytest.raises(DataParallelError, match="start the run with one launcher"):
        detect_processes({"WORLD_SIZE": "2", "OMPI_COMM_WORLD_SIZE": "2"})


def test_each_backend_needs_its_own_launcher_and_the_batch_becomes_global(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    args = argparse.Namespace(backend="jittor", train_batch_size=3)
    assert "--backend jittor trains on several processes under mpirun" in setup_processes(args)[0]
    args = argparse.Namespace(backend="torch", train_batch_size=3)
    assert setup_processes(args) == [] and setup_processes(args) == []  # once per args
    assert (args.train_batch_size, args.rank_batch_size) == (6, 3)
    assert dropout_rows(args) == (3, 6)


def lm_batch(rows=6, width=5, seed=0):
    rng = np.random.default_rng(seed)
    mask = (rng.random((rows, width)) > 0.4).astype(np.float32)
    return {"input": rng.integers(0, 50, (rows, width)), "mask": mask,
            "loss": rng.random((rows, width)).astype(np.float64)}


def masked_mean(batch):  # the models' language-model loss
    return float((batch["loss"] * batch["mask"]).sum() / (batch["mask"].sum() + 0.0001))


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_weighted_losses_sum_to_the_global_batch_loss(world):
    batch = lm_batch()
    shares = [loss_share(batch, Processes(r, world)) for r in range(world)]
    rows = [shard_rows(batch, Processes(r, world)) for r in range(world)]
    assert np.concatenate([r["input"] for r in rows]).tolist() == batch["input"].tolist()
    combined = sum(s * masked_mean(r) for s, r in zip(shares, rows))
    assert combined == pytest.approx(masked_mean(batch), rel=1e-12)
    labels = {"input": batch["input"], "label": np.array([0, 1, 1, 0, 1, 1])}
    weights = [0.25, 2.0]
    assert loss_normaliser(labels, weights) == 0.5 + 8.0
    assert loss_share(labels, Processes(0, 2), weights) == pytest.approx(4.25 / 8.5)
    assert loss_share(labels, Processes(1, 2)) == 0.5


def test_a_ranks_dropout_masks_are_its_rows_of_the_global_masks():
    whole = SharedDropout(0.3, seed=7)
    whole.set_step(5)
    expected = whole.mask(2, (6, 4, 8))
    for rank in range(3):
        part = SharedDropout(0.3, seed=7, rows=(rank * 2, 6))
        part.set_step(5)
        np.testing.assert_array_equal(part.mask(2, (2, 4, 8)), expected[rank * 2:rank * 2 + 2])


# --------------------------------------------------------------- the launchers, for real
def launcher(backend):
    """The command that starts 2 processes of a script with the backend's own engine."""
    if backend == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun (OpenMPI) is not installed: bash scripts/install.sh installs it")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [mpirun, "--oversubscribe", "-np", "2", *root]


def ft_args(encoded, work_dir, backend, batch, extra=()):
    return ["scripts/gpt2_ft.py", "--backend", backend, "--device", "cpu",
            "--train_data", str(encoded / "train.jsonl"), "--valid_data", str(encoded / "valid.jsonl"),
            "--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--lora_dim", "4",
            "--lora_alpha", "16", "--lora_dropout", "0.1", "--shared_dropout",
            "--train_batch_size", str(batch), "--valid_batch_size", "8", "--seq_len", "64",
            "--max_step", str(MAX_STEP), "--warmup_step", "2", "--lr", "0.002", "--grad_acc", "2",
            "--clip", "1.0", "--log_interval", "2", "--eval_interval", "6", "--save_interval", "8",
            "--max_eval_batches", "2", "--random_seed", "5", "--work_dir", str(work_dir),
            "--no_progress", *extra]


def run(command, what):
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{what}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def result(work_dir):
    with open(work_dir / "train_log.jsonl") as f:
        log = [json.loads(line) for line in f]
    weights = read_checkpoint(work_dir / f"model.{MAX_STEP}.pt")
    return log, {k: v for k, v in weights.items() if "lora" in k}


def assert_same_training(got, expected):
    (log, weights), (ref_log, ref_weights) = got, expected
    assert [(r["kind"], r["step"]) for r in log] == [(r["kind"], r["step"]) for r in ref_log]
    for record, ref in zip(log, ref_log):
        key = "loss" if record["kind"] == "train" else "valid_loss"
        assert abs(record[key] - ref[key]) <= TOLERANCE * abs(ref[key]), (record, ref)
        if record.get("grad_norm") is not None:
            assert record["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
    assert sorted(weights) == sorted(ref_weights) and weights
    for name, value in weights.items():
        relative = np.linalg.norm(value - ref_weights[name]) / np.linalg.norm(ref_weights[name])
        assert relative <= TOLERANCE, (name, relative)


@pytest.fixture(scope="module", params=["torch", "jittor"])
def runs(request, tmp_path_factory, encoded):
    """(backend, encoded, 1 process at batch 4, 2 processes at batch 2 uninterrupted)."""
    backend = request.param
    command = launcher(backend)
    one, two = tmp_path_factory.mktemp(f"{backend}-1"), tmp_path_factory.mktemp(f"{backend}-2")
    run([sys.executable, *ft_args(encoded, one, backend, 4)], "1 process")
    done = run([*command, *ft_args(encoded, two, backend, 2)], "2 processes")
    return backend, command, encoded, result(one), result(two), two, done.stdout


def test_two_processes_at_batch_b_train_as_one_at_2b(runs):
    backend, _, _, one, two, work, stdout = runs
    assert_same_training(two, one)
    assert stdout.count(f"done: {MAX_STEP} steps") == 1  # rank 0 alone prints
    with open(work / "run_config.json") as f:
        config = json.load(f)
    assert (config["train_batch_size"], config["processes"]) == (4, 2)


def process_of_rank(root_pid, rank):
    """The training process of `rank` among the descendants of `root_pid` (not a compile
    worker it forked: those carry its environment too)."""
    parents, commands, environs = {}, {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                commands[int(entry)] = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environs[int(entry)] = f.read().split(b"\0")
        except OSError:
            continue

    def descends(pid):
        while pid in parents and pid != root_pid:
            pid = parents[pid]
        return pid == root_pid

    wanted = {f"RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for pid, command in commands.items():
        if (b"gpt2_ft.py" in command and descends(pid) and wanted & set(environs[pid])
                and not wanted & set(environs.get(parents[pid], ()))):
            return pid
    return None


def test_sigterm_to_one_rank_stops_every_rank_and_one_process_resumes(runs, tmp_path):
    backend, command, encoded, _, two, _, _ = runs
    work = tmp_path / "work"
    proc = subprocess.Popen([*command, *ft_args(encoded, work, backend, 2)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 600
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("| epoch   1 step        2 ") or time.time() > deadline:
            break
    rank1 = process_of_rank(proc.pid, 1)
    assert rank1 is not None, "".join(lines)
    os.kill(rank1, signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    out = "".join(lines) + out
    assert proc.returncode != 0, out
    assert "rank 1: SIGTERM: finishing the current update" in out
    assert out.count("rerun with --resume to continue") == 1, out
    step = int(out.split("stopped at step ")[1].split(";")[0])
    # rank 0 prints step 2's line before that update's stop vote, so the signal may reach rank 1
    # before its vote there (stop at step 2) or after it (a later update): both are updates
    assert step % 2 == 0 and 2 <= step < MAX_STEP, out
    assert os.path.isfile(work / f"model.{step}.pt")
    assert not os.path.exists(work / f"model.{MAX_STEP}.pt")
    assert not os.path.exists(work / "run.lock")
    run([sys.executable, *ft_args(encoded, work, backend, 4, ["--resume"])], "1 process resumes")
    assert_same_training(result(work), two)


def test_work_sh_launches_each_backend_with_its_engine_at_the_per_process_batch(monkeypatch):
    from shared.train.data_parallel import launch_command, per_process_batch
    assert launch_command("torch", 1, "py") == launch_command("jittor", 1, "py") == ["py"]
    assert launch_command("torch", 2, "py") == ["py", "-m", "torch.distributed.run",
                                                "--standalone", "--nproc_per_node", "2"]
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/{name}")
    command = launch_command("jittor", 3, "py")
    assert command[:4] == ["/opt/mpirun", "--oversubscribe", "-np", "3"] and command[-1] == "py"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataParallelError, match="scripts/install.sh installs OpenMPI"):
        launch_command("jittor", 2)
    assert per_process_batch(8, 2, "--train_batch_size") == 4
    with pytest.raises(DataParallelError, match="--nproc 3 does not divide --train_batch_size 8"):
        per_process_batch(8, 3, "--train_batch_size")


def test_a_collective_that_never_returns_ends_the_rank_with_one_line_naming_it():
    code = ("import time\n"
            "from shared.train.data_parallel import Processes, Watchdog\n"
            "with Watchdog(Processes(1, 2, 1, 'mpirun'), 0.5).guard('the stop vote at step 4'):\n"
            "    time.sleep(60)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: rank 1 of 2: no answer from the other ranks within 0.5 s (the stop vote at step "
        "4): another rank failed or hangs; stopping (rerun with --resume)")
