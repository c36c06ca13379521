"""Training on several processes (torchrun for torch, mpirun for Jittor), equal to one process.

N processes at --train_batch_size b train as one process at batch N*b would: every rank draws the
global batch of N*b examples in the one-process order (so `--grad_acc`, resuming and epochs work
unchanged) and keeps rows [rank*b, (rank+1)*b) at the global batch's width; its loss is weighted
by its share of the global loss's normaliser (`loss_normaliser`: the mask's token count for a
language-model batch), so the gradient the engines average over ranks (DDP, Jittor's MPI
optimizer) is the one-process gradient up to summation order, and so is the logged loss; the
exact-dropout masks (shared/train/dropout.py) are drawn for the global batch and sliced the
same way.
Rank 0 alone writes checkpoints, logs, events and the progress bar; the checkpoints hold no
per-rank state, so a run resumes with any N at the same global batch.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from dataclasses import dataclass

import numpy as np

# (rank, world size, local rank) variables of each launcher
LAUNCHER_VARIABLES = {"torchrun": ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
                      "mpirun": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                 "OMPI_COMM_WORLD_LOCAL_RANK")}
ENGINE_LAUNCHERS = {"torch": "torchrun", "jittor": "mpirun"}  # each framework's own engine
MASK_EPSILON = 0.0001  # the language-model loss: sum(loss * mask) / (sum(mask) + 0.0001)
DEFAULT_TIMEOUT_S = 1800.0  # torch.distributed's own default


class DataParallelError(ValueError):
    """A launch that cannot train as one process would; the message names the variable."""


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the ones training together (one: rank 0 of 1)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_variable(environ, name) -> int:
    value = environ.get(name, "0")
    try:
        return int(value)
    except ValueError:
        raise DataParallelError(f"environment variable {name}={value!r} is not an integer") \
            from None


def detect_processes(environ=None) -> Processes:
    """The launcher's rank and world size from its environment variables (none: one process)."""
    environ = os.environ if environ is None else environ
    found = [name for name, (_, size, _) in LAUNCHER_VARIABLES.items() if size in environ]
    if not found:
        return Processes()
    if len(found) > 1:
        raise DataParallelError(f"both torchrun's WORLD_SIZE and mpirun's OMPI_COMM_WORLD_SIZE "
                                f"are set: start the run with one launcher")
    launcher = found[0]
    rank, size, local = (_int_variable(environ, name) for name in LAUNCHER_VARIABLES[launcher])
    if size < 1 or not 0 <= rank < size:
        names = LAUNCHER_VARIABLES[launcher]
        raise DataParallelError(f"{names[0]}={rank} is not a rank of {names[1]}={size}")
    return Processes(rank, size, local, launcher)


def setup_processes(args) -> list:
    """Set `args.processes` and, under N > 1 processes, `args.rank_batch_size` (the flag's
    per-process batch) and `args.train_batch_size` (the global batch N*b); the problems as lines.
    Runs once per args (validate() may be called again)."""
    if getattr(args, "processes", None) is not None:
        return []
    try:
        processes = detect_processes()
    except DataParallelError as exc:
        args.processes = Processes()
        return [str(exc)]
    args.processes = processes
    if not processes.distributed:
        return []
    wanted = ENGINE_LAUNCHERS[args.backend]
    if processes.launcher != wanted:
        return [f"--backend {args.backend} trains on several processes under {wanted} (its "
                f"framework's own engine); this run was started by {processes.launcher}"]
    args.rank_batch_size = args.train_batch_size
    args.train_batch_size = args.train_batch_size * processes.world_size
    return []


def processes_of(args) -> Processes:
    """`args.processes` where validate() set it, else what the launcher's variables say."""
    return getattr(args, "processes", None) or detect_processes()


def dropout_rows(args):
    """(first row, global rows) of this rank's share of each batch, for SharedDropout; None for
    one process."""
    processes = processes_of(args)
    if not processes.distributed:
        return None
    return processes.rank * args.rank_batch_size, args.train_batch_size


def shard_rows(batch: dict, processes: Processes) -> dict:
    """This rank's rows of a global batch (every array split along its first axis)."""
    rows = len(batch["input"])
    if rows % processes.world_size:
        raise DataParallelError(f"a batch of {rows} rows does not split over "
                                f"{processes.world_size} processes")
    size = rows // processes.world_size
    first = processes.rank * size
    return {key: value[first:first + size] for key, value in batch.items()}


def loss_normaliser(batch: dict, class_weights=None) -> float:
    """What the batch's loss divides by: a language-model batch's mask total (+ the loss's
    epsilon), a classification batch's total class weight, else its number of rows."""
    if "mask" in batch:
        return float(np.sum(batch["mask"], dtype=np.float64)) + MASK_EPSILON
    if "label" in batch and class_weights is not None:
        return float(np.sum(np.asarray(class_weights, dtype=np.float64)[batch["label"]]))
    return float(len(batch["input"]))


def loss_share(batch: dict, processes: Processes, class_weights=None) -> float:
    """This rank's rows' normaliser over the global batch's: its loss times this share, summed
    over ranks, is the global batch's loss."""
    return (loss_normaliser(shard_rows(batch, processes), class_weights)
            / loss_normaliser(batch, class_weights))


def stop_votes(signum, signals) -> np.ndarray:
    """One count per stop signal (all zero when none arrived): summed over ranks, every rank
    learns at the same update that one of them was asked to stop, and by which signal."""
    return np.array([1.0 if signum == s else 0.0 for s in signals], dtype=np.float64)


class NullLog:
    """The training log of a rank other than 0: rank 0 alone writes."""

    def write(self, record):
        pass

    def close(self):
        pass


def main_process_lock(work_dir, processes, lock_cls):
    """`lock_cls(work_dir)` on rank 0 (shared/runtime/run_lock.py's RunLock): one lock per run,
    not per rank; the other ranks write nothing into the folder."""
    return lock_cls(work_dir) if processes.is_main else contextlib.nullcontext()


class Watchdog:
    """Ends this process with one line naming its rank when a collective step does not finish
    within `timeout_s` (another rank failed or hangs): no rank waits forever. Jittor's MPI has
    no timeout of its own; torch's gloo/NCCL one fires later than this with a longer message."""

    def __init__(self, processes: Processes, timeout_s: float):
        self.processes, self.timeout_s = processes, float(timeout_s)

    def _expire(self, what):
        print(f"error: rank {self.processes.rank} of {self.processes.world_size}: no answer from "
              f"the other ranks within {self.timeout_s:g} s ({what}): another rank failed or "
              f"hangs; stopping (rerun with --resume)", file=sys.stderr, flush=True)
        os._exit(2)

    @contextlib.contextmanager
    def guard(self, what):
        if not self.processes.distributed:
            yield
            return
        timer = threading.Timer(self.timeout_s, self._expire, args=(what,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()


def launch_command(backend, nproc, python=None) -> list:
    """The command that runs a Python script on `nproc` processes with the backend's own engine
    (torchrun; mpirun, which must be installed): the script's path and flags follow."""
    python = python or sys.executable
    if nproc == 1:
        return [python]
    if backend == "torch":
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise DataParallelError(f"--nproc {nproc} with the jittor backend runs under mpirun, "
                                f"which is not installed: bash scripts/install.sh installs OpenMPI")
    as_root = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    return [mpirun, "--oversubscribe", "-np", str(nproc), *as_root, python]


def per_process_batch(batch, nproc, name) -> int:
    """The per-process batch that keeps the global batch `batch` on `nproc` processes."""
    if batch % nproc:
        raise DataParallelError(f"--nproc {nproc} does not divide {name} {batch}: the global "
                                f"batch is split evenly over the processes")
    return batch // nproc
