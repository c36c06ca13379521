#!/usr/bin/env python
"""Makes logs/data-parallel-cpu: training on 2 processes against 1, both engines, on the CPU.

For each backend the same LoRA run (E2E, a 3-layer 96-wide GPT-2 from its seeded init, exact
dropout, --grad_acc 2, clipping) trains as 1 process at batch 8 and as 2 processes at batch 4
(torch: torchrun, DDP over gloo; jittor: mpirun, Jittor's MPI); then a third run of 2 processes
gets SIGTERM on rank 1 mid-way and 1 process at batch 8 resumes its checkpoint. report.md
compares the losses of every step and the final LoRA weights; the train logs are copied beside.

  GPT2_VOCAB_DIR=../shared/data/gpt2 E2E_DATA_DIR=../shared/data/e2e-offline \
      python3 logs/data-parallel-cpu/make.py [--work runs/data-parallel-cpu]
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from shared.model.checkpoint import read_checkpoint  # noqa: E402
from shared.text.e2e_data import prepare_e2e  # noqa: E402

OUT = os.path.join(ROOT, "logs", "data-parallel-cpu")
MAX_STEP = 60
ENV = dict(os.environ, PYTHONUNBUFFERED="1",
           PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))


def launcher(backend):
    if backend == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return ["mpirun", "--oversubscribe", "-np", "2", *root]


def ft_args(data, work_dir, backend, batch, extra=()):
    return ["scripts/gpt2_ft.py", "--backend", backend, "--device", "cpu",
            "--train_data", os.path.join(data, "train.jsonl"),
            "--valid_data", os.path.join(data, "valid.jsonl"),
            "--n_embd", "96", "--n_layer", "3", "--n_head", "4", "--lora_dim", "4",
            "--lora_alpha", "32", "--lora_dropout", "0.1", "--shared_dropout",
            "--train_batch_size", str(batch), "--valid_batch_size", "8", "--seq_len", "96",
            "--max_step", str(MAX_STEP), "--warmup_step", "6", "--lr", "0.002", "--grad_acc", "2",
            "--clip", "1.0", "--log_interval", "10", "--eval_interval", "30",
            "--save_interval", "20", "--max_eval_batches", "8", "--random_seed", "10",
            "--work_dir", work_dir, "--no_progress", *extra]


def run(command):
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}"
                 f"\n{done.stderr[-2000:]}")
    return time.time() - started


def process_of_rank(root_pid, rank):
    """The training process of `rank` below `root_pid` (not a compile worker it forked)."""
    parents, commands, environs = {}, {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                commands[int(entry)] = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environs[int(entry)] = set(f.read().split(b"\0"))
        except OSError:
            continue
    wanted = {f"RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for pid, command in commands.items():
        up = pid
        while up in parents and up != root_pid:
            up = parents[up]
        if (up == root_pid and b"gpt2_ft.py" in command and wanted & environs[pid]
                and not wanted & environs.get(parents[pid], set())):
            return pid
    return None


def interrupted_then_resumed(backend, data, work):
    """2 processes until rank 1 gets SIGTERM after step 20's log line, then 1 process resumes."""
    log = os.path.join(work, "train_log.jsonl")
    proc = subprocess.Popen([*launcher(backend), *ft_args(data, work, backend, 4)], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
        if os.path.isfile(log) and any(json.loads(line)["step"] >= 20 for line in open(log)):
            break
        time.sleep(0.2)
    os.kill(process_of_rank(proc.pid, 1), signal.SIGTERM)
    out, _ = proc.communicate()
    stopped = next(line for line in out.splitlines() if line.startswith("stopped at step"))
    run([sys.executable, *ft_args(data, work, backend, 8, ["--resume"])])
    return int(stopped.split("stopped at step ")[1].split(";")[0]), out


def read_run(work):
    with open(os.path.join(work, "train_log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    weights = read_checkpoint(os.path.join(work, f"model.{MAX_STEP}.pt"))
    return log, {k: v for k, v in weights.items() if "lora" in k}


def compare(a, b):
    (log_a, w_a), (log_b, w_b) = a, b
    train_a = {r["step"]: r for r in log_a if r["kind"] == "train"}
    train_b = {r["step"]: r for r in log_b if r["kind"] == "train"}
    assert sorted(train_a) == sorted(train_b) == list(range(1, MAX_STEP + 1))
    loss = max(abs(train_a[s]["loss"] - train_b[s]["loss"]) / abs(train_a[s]["loss"])
               for s in train_a)
    norms = [s for s in train_a if train_a[s]["grad_norm"] is not None]
    norm = max(abs(train_a[s]["grad_norm"] - train_b[s]["grad_norm"]) / train_a[s]["grad_norm"]
               for s in norms)
    valid_a = [r["valid_loss"] for r in log_a if r["kind"] == "valid"]
    valid_b = [r["valid_loss"] for r in log_b if r["kind"] == "valid"]
    valid = max(abs(x - y) / abs(x) for x, y in zip(valid_a, valid_b))
    rel_l2 = max(np.linalg.norm(w_a[k] - w_b[k]) / np.linalg.norm(w_a[k]) for k in w_a)
    max_abs = max(float(np.abs(w_a[k] - w_b[k]).max()) for k in w_a)
    return {"loss": loss, "grad_norm": norm, "valid_loss": valid, "rel_l2": rel_l2,
            "max_abs": max_abs, "final_loss": train_a[MAX_STEP]["loss"],
            "final_valid": valid_a[-1]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "runs", "data-parallel-cpu"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    data = os.path.join(args.work, "data")
    prepare_e2e(os.environ["E2E_DATA_DIR"], data, vocab_dir=os.environ["GPT2_VOCAB_DIR"],
                splits=("train", "valid"))
    rows, times, stops = {}, {}, {}
    for backend in ("torch", "jittor"):
        one, two, resumed = (os.path.join(args.work, f"{backend}-{n}")
                             for n in ("1proc", "2proc", "2proc-stop-1proc-resume"))
        times[backend] = (run([sys.executable, *ft_args(data, one, backend, 8)]),
                          run([*launcher(backend), *ft_args(data, two, backend, 4)]))
        stops[backend], _ = interrupted_then_resumed(backend, data, resumed)
        runs = {name: read_run(path) for name, path in
                (("1", one), ("2", two), ("resumed", resumed))}
        rows[backend] = (compare(runs["1"], runs["2"]), compare(runs["2"], runs["resumed"]))
        for name, path in (("1proc", one), ("2proc", two), ("2proc-stop-1proc-resume", resumed)):
            shutil.copy(os.path.join(path, "train_log.jsonl"),
                        os.path.join(OUT, f"{backend}_{name}_train_log.jsonl"))
    write_report(rows, times, stops)


def write_report(rows, times, stops):
    import jittor_impl.runtime  # noqa: F401  (the versions below)
    import jittor
    import torch
    lines = [
        "# Training on several processes against one (CPU)",
        "",
        f"Made by `python3 logs/data-parallel-cpu/make.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" ({platform.machine()}, {os.cpu_count()} cores shared with other work; torch "
        f"{torch.__version__}, jittor {jittor.__version__}, numpy {np.__version__}, Python "
        f"{platform.python_version()}, {subprocess.run(['mpirun', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}).",
        "",
        f"E2E LoRA fine-tuning of a 3-layer, 96-wide GPT-2 from its seeded init: r=4, alpha=32, "
        f"exact dropout 0.1 (`--shared_dropout`), seq_len 96, --grad_acc 2, --clip 1.0, lr 0.002 "
        f"(6 warm-up steps, linear), {MAX_STEP} steps, fp32. Each backend trains it as 1 process "
        f"at --train_batch_size 8 and as 2 processes at --train_batch_size 4 (torch: `torchrun "
        f"--standalone --nproc_per_node 2`, DDP over gloo; jittor: `mpirun -np 2`, Jittor's "
        f"MPI); a third run of 2 processes is stopped by SIGTERM to rank 1 and resumed by 1 "
        f"process at batch 8. Differences are relative (max over steps / over LoRA tensors).",
        "",
        "| backend | compared | loss, every step | grad norm | valid loss | LoRA weights, rel. L2 | LoRA weights, max abs | final train loss | final valid loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, (dp, resumed) in rows.items():
        for what, row in ((f"2 processes at 4 vs 1 at 8", dp),
                          (f"stopped at step {stops[backend]} by SIGTERM to rank 1, resumed by 1 process, vs 2 processes uninterrupted", resumed)):
            lines.append(f"| {backend} | {what} | {row['loss']:.2e} | {row['grad_norm']:.2e} | "
                         f"{row['valid_loss']:.2e} | {row['rel_l2']:.2e} | {row['max_abs']:.2e} | "
                         f"{row['final_loss']:.6f} | {row['final_valid']:.6f} |")
    lines += ["", "Wall time of the uninterrupted runs (seconds). The 2 cores were shared with other "
              "work whose load changed from run to run: the times show that both engines run, "
              "not how they scale.", "",
              "| backend | 1 process | 2 processes |", "|---|---|---|"]
    for backend, (t1, t2) in times.items():
        lines.append(f"| {backend} | {t1:.0f} | {t2:.0f} |")
    lines += ["", "Train logs: `<backend>_1proc_train_log.jsonl`, `<backend>_2proc_train_log.jsonl`, "
              "`<backend>_2proc-stop-1proc-resume_train_log.jsonl` (rank 0's, the loss summed "
              "over ranks).", ""]
    with open(os.path.join(OUT, "report.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
