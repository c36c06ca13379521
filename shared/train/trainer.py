"""The training loop of microsoft/LoRA's `gpt2_ft.py`, written once for both backends.

What depends on the framework (forward/backward, the optimizer update, moving data to the
device) sits behind a small backend object (`torch_impl.train.TorchBackend`,
`jittor_impl.train.JittorBackend`, twins); everything else lives here: data order, learning
rate schedule, gradient accumulation, logging, evaluation, checkpoints and resuming.

Semantics kept from the reference: `step` counts micro-batches; an update happens every
`grad_acc` micro-batches with learning rate `lr_at(step)`; `--max_step` counts micro-batches
(derived from `--max_epoch` when absent); intermediate checkpoints `model.{step}.pt` hold the
LoRA weights only (a --peft method's trained weights; all weights for full fine-tuning), the
final one all weights. A checkpoint falls due every `--save_interval` steps and is written at
the next update (the reference saves inside an accumulation window too, where the gradient
summed so far would be lost to a resume).
Additions: every step is logged as a JSON line; values are fetched from the device once per
`--log_interval` (and before each eval/save), so the loop does not wait on the GPU every step;
a non-finite loss stops the run naming the step; Ctrl-C, SIGTERM or SIGHUP finishes the current
update, saves a checkpoint and exits, and `--resume` continues exactly where it stopped; the
work_dir is locked for the run (shared/runtime/run_lock.py), so a second training into it is refused.
Under torchrun / mpirun (shared/train/data_parallel.py) every rank runs this loop on its rows of
the global batch; the ranks agree at each update on whether one was asked to stop, the logged
loss is summed over ranks, and rank 0 alone writes.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

import numpy as np

from shared.runtime.atomic import write_json
from shared.text.batching import FTDataset, check_batch
from shared.model.checkpoint_files import latest_checkpoint_step
from shared.model.checkpoint import (CheckpointError, load_trainer_state, save_checkpoint,
                                     save_trainer_state)
from shared.model.pretrained import checkpoint_config, remove_config_beside, write_config_beside
from shared.model.lora_settings import settings_from_config
from shared.model.peft_methods import trainable_line
from shared.runtime.run_lock import RunLock
from shared.runtime.peak_memory import peak_rss_mib
from shared.train.schedule import lr_at
from shared.runtime.stop_signals import STOP_SIGNALS, signal_name, stop_signal_handler
from shared.train.data_parallel import (NullLog, Watchdog, loss_share, main_process_lock,
                                        processes_of, shard_rows, stop_votes)
from shared.train.train_args import model_config, validate
from shared.train.trainlog import JsonlLogWriter

# Arguments that change the result: a resumed run must use the same values.
RESUME_KEYS = ("train_data", "train_batch_size", "grad_acc", "clip", "seq_len", "model_card",
               "n_embd", "n_layer", "n_head", "lora_dim", "lora_alpha", "init_checkpoint",
               "lora_dropout", "label_smooth", "random_seed", "lr", "weight_decay",
               "correct_bias", "adam_epislon", "no_decay_bias", "adam_beta1", "adam_beta2",
               "scheduler", "max_step", "warmup_step", "shared_dropout", "max_epoch")
# The --peft flags, compared when the saved run recorded them (runs before them trained lora/full).
PEFT_RESUME_KEYS = ("peft", "num_virtual_tokens", "prompt_init", "ptuning_encoder",
                    "encoder_hidden_size", "prefix_projection", "adapter_dim")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, out of memory, bad resume); message says why."""


class TrainingInterrupted(RuntimeError):
    """Stopped on request after saving a checkpoint; `--resume` continues."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """SIGINT/SIGTERM/SIGHUP set a flag that the loop reads at update boundaries; a second
    SIGINT interrupts at once."""

    def __init__(self, who=""):
        self.requested, self.signum, self.who = False, None, who
        self._handlers = stop_signal_handler(self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, self.signum or signum
        print(f"\n{self.who}{signal_name(signum)}: finishing the current update, then saving a checkpoint "
              f"(Ctrl-C again to abort at once)", flush=True)

    def __enter__(self):  # not in the main thread: no handlers, Ctrl-C behaves as usual
        self._handlers.__enter__()
        return self

    def __exit__(self, *exc):
        self._handlers.__exit__(*exc)


class Trainer:
    def __init__(self, args, backend_cls, on_step=None, datasets=None, resume_keys=()):
        """`datasets`: (train, valid) objects with FTDataset's batch interface for tasks other
        than E2E (default: --train_data/--valid_data read as encoded E2E jsonl);
        `resume_keys`: the task's own arguments that a resumed run must keep."""
        self.args = validate(args, data_files=datasets is None)
        self.processes = processes_of(args)  # one, or this rank of several (data_parallel.py)
        self.watchdog = Watchdog(self.processes, getattr(args, "dist_timeout", 1800.0))
        self.on_step = on_step  # called with the step number after each step (tests, samples)
        self.resume_keys = RESUME_KEYS + tuple(resume_keys)
        self.work_dir = args.work_dir
        os.makedirs(self.work_dir, exist_ok=True)
        self.config = model_config(args)
        if datasets is None:
            datasets = (FTDataset.from_file(args.train_data, args.train_batch_size, args.seq_len),
                        FTDataset.from_file(args.valid_data, args.valid_batch_size, args.seq_len))
        self.train_set, self.valid_set = datasets
        for dataset in (self.train_set, self.valid_set):
            report = dataset.truncation_report()
            if report and self.processes.is_main:
                print(f"warning: {report}", flush=True)
            if dataset.keeps_no_completion():  # the loss would be 0, or learn nothing real
                raise TrainingError(dataset.no_completion_error())
            report = dataset.completion_report()
            if report and self.processes.is_main:
                print(report, file=sys.stderr, flush=True)
        self.max_step = args.max_step or args.max_epoch * self.train_set.num_batches
        if args.warmup_step > self.max_step:
            raise TrainingError(f"--warmup_step {args.warmup_step} > max_step {self.max_step} "
                                f"(from --max_epoch {args.max_epoch})")
        self.backend = backend_cls(self.config, args)
        self.parameter_counts = self.backend.parameter_counts()  # (trainable, all), as peft counts
        if self.processes.is_main:
            print(trainable_line(*self.parameter_counts), flush=True)
        self.step, self.epoch, self.batch_in_epoch, self.elapsed_before = 0, 1, 0, 0.0
        self.pending = []  # per-step records whose device values are not fetched yet
        self.last_valid = None
        self.best_ppl = None
        self.log = None  # JsonlLogWriter, opened by train()
        self.bar = None  # tqdm progress bar unless --no_progress, opened by train()
        self.t_start = None  # wall clock when train() started; elapsed() counts from it
        self.window_start = self.line_start = 0.0  # elapsed() at the last flush / log line
        self.window_losses = []  # losses since the last log line

    # ---------------------------------------------------------------------------- state
    def run_config(self):
        """The flags (--train_batch_size: the global batch), without per-rank values: a run
        resumes with any number of processes."""
        config = {k: v for k, v in vars(self.args).items()
                  if k not in ("processes", "rank_batch_size")}
        config["max_step"] = self.max_step
        if self.processes.distributed:
            config["processes"] = self.processes.world_size
        return config

    def resume(self):
        step = latest_checkpoint_step(self.work_dir)
        if step is None:
            raise TrainingError(f"--resume: no complete checkpoint (model.N.pt with "
                                f"trainer_state.N.npz) in {self.work_dir}")
        try:
            meta, optim = load_trainer_state(
                os.path.join(self.work_dir, f"trainer_state.{step}.npz"))
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc
        if step % self.args.grad_acc and step < self.max_step:
            raise TrainingError(
                f"--resume: checkpoint {step} in {self.work_dir} was saved inside an accumulation "
                f"window of --grad_acc {self.args.grad_acc} (by an older version) and cannot "
                f"continue exactly; delete model.{step}.pt and trainer_state.{step}.npz to resume "
                f"from the one before")
        saved, now = meta["run_config"], self.run_config()
        keys = self.resume_keys + tuple(k for k in PEFT_RESUME_KEYS if k in saved)
        changed = [f"--{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys
                   if saved.get(k) != now.get(k)]
        if changed:
            raise TrainingError("--resume with arguments that change the result:\n  "
                                + "\n  ".join(changed))
        self.backend.load_trainable_checkpoint(os.path.join(self.work_dir, f"model.{step}.pt"))
        self.backend.load_optimizer_state(optim)
        self.step, self.epoch = meta["step"], meta["epoch"]
        self.batch_in_epoch, self.elapsed_before = meta["batch_in_epoch"], meta["elapsed_s"]
        self.write(f"resumed from step {step} (epoch {self.epoch}, batch {self.batch_in_epoch}) "
                   f"in {self.work_dir}")

    def save(self, final=False):
        """Every rank calls it (its flush is collective); rank 0 alone writes."""
        self.flush()
        # intermediate checkpoints: the trained weights only (LoRA's, or a PEFT method's)
        lora_only = (self.config.lora_attn_dim > 0 or self.config.peft is not None) and not final
        model_path = os.path.join(self.work_dir, f"model.{self.step}.pt")
        state_path = os.path.join(self.work_dir, f"trainer_state.{self.step}.npz")
        if not self.processes.is_main:
            return model_path
        meta = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "elapsed_s": self.elapsed(), "backend": self.backend.name,
                "run_config": self.run_config()}
        for path, write in (
                (model_path, lambda: save_checkpoint(
                    model_path, self.backend.state_numpy(lora_only=lora_only), layout="lora",
                    lora_settings=settings_from_config(self.config), peft_settings=self.config.peft)),
                (state_path, lambda: save_trainer_state(state_path, meta,
                                                        self.backend.optimizer_state()))):
            try:
                write()
            except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise TrainingError(
                    f"cannot write {path} at step {self.step}: {reason}. Nothing half-written "
                    f"was left; free space or fix permissions on {self.work_dir}, then rerun "
                    f"with --resume to continue from the last complete checkpoint") from exc
        return model_path

    def elapsed(self):
        return self.elapsed_before + time.time() - self.t_start

    # --------------------------------------------------------------------------- logging
    def flush(self):
        """Fetch the pending device values (one host sync), check them, write the log."""
        if not self.pending:
            return
        values = self.backend.fetch([r["loss"] for r in self.pending]
                                    + [r["grad_norm"] for r in self.pending
                                       if r["grad_norm"] is not None]
                                    + [v for r in self.pending for v in r["metrics"].values()])
        losses, rest = values[:len(self.pending)], iter(values[len(self.pending):])
        norms = [next(rest) if r["grad_norm"] is not None else None for r in self.pending]
        if self.processes.distributed:  # the global batch's loss: the ranks' shares summed
            losses = self.all_reduce([r["share"] * loss for r, loss in zip(self.pending, losses)],
                                     f"the losses up to step {self.step}").tolist()
        now = self.elapsed()
        window = max(now - self.window_start, 1e-9)
        tokens_per_s = sum(r["tokens"] for r in self.pending) / window
        for record, loss, norm in zip(self.pending, losses, norms):
            if not math.isfinite(loss):
                raise TrainingError(f"loss is {loss} at step {record['step']} (epoch "
                                    f"{record['epoch']}): stopping. Lower --lr, set --clip, or "
                                    f"use fp32; the last saved checkpoint is untouched")
            self.log.write({"kind": "train", "step": record["step"], "epoch": record["epoch"],
                            "loss": loss, "lr": record["lr"], "grad_norm": norm,
                            "tokens_per_s": tokens_per_s, "elapsed_s": record["elapsed_s"],
                            "backend": self.backend.name,
                            **{name: next(rest) for name in record["metrics"]}})
        self.window_losses.extend(losses)
        self.pending, self.window_start = [], now

    def print_log_line(self):
        """A line in the reference's stdout format (scripts/compare_runs.py reads both)."""
        if not self.window_losses:
            return
        avg = sum(self.window_losses) / len(self.window_losses)
        ms = 1000.0 * (self.elapsed() - self.line_start) / len(self.window_losses)
        lr = lr_at(self.args.lr, self.args.scheduler, self.step, self.args.warmup_step, self.max_step)
        self.write(f"| epoch {self.epoch:3d} step {self.step:>8d} | {self.batch_in_epoch:>6d} batches | "
                   f"lr {lr:.3g} | ms/batch {ms:5.2f} | loss {self.window_losses[-1]:5.2f} | "
                   f"avg loss {avg:5.2f} | ppl {math.exp(min(avg, 50)):5.2f}")
        self.window_losses, self.line_start = [], self.elapsed()

    def all_reduce(self, values, what):
        """The sum over ranks (a collective: every rank calls it at the same point)."""
        with self.watchdog.guard(what):
            try:
                return self.backend.all_reduce(values)
            except RuntimeError as exc:  # a rank left: gloo/MPI report it here
                raise self.lost_ranks(what, exc) from exc

    def lost_ranks(self, what, exc):
        """One line for a collective that failed (another rank stopped or failed)."""
        return TrainingError(f"rank {self.processes.rank} of {self.processes.world_size}: "
                             f"{what} failed, another rank stopped or failed ({exc}); rerun "
                             f"with --resume to continue from the last checkpoint")

    def stop_agreed(self, stop):
        """At an update: the stop signal any rank received (None: go on); every rank learns it
        at the same update, so all save together and no collective is left waiting."""
        if not self.processes.distributed:
            return stop.signum if stop.requested else None
        votes = self.all_reduce(stop_votes(stop.signum if stop.requested else None, STOP_SIGNALS),
                                f"the stop vote at step {self.step}")
        return next((s for s, v in zip(STOP_SIGNALS, votes) if v > 0), None)

    def write(self, text):
        if not self.processes.is_main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    # -------------------------------------------------------------------------- evaluate
    def evaluate(self):
        self.flush()
        started = time.time()
        losses, metrics = [], []
        for index, batch in enumerate(self.valid_set.eval_batches()):
            if self.args.max_eval_batches is not None and index >= self.args.max_eval_batches:
                break
            losses.append(self.backend.eval_loss(batch))
            metrics.append(self.backend.take_metrics())
        values = self.backend.fetch(losses + [v for m in metrics for v in m.values()])
        valid_loss = float(np.mean(values[:len(losses)]))
        valid_ppl = math.exp(min(valid_loss, 700.0))
        rest = iter(values[len(losses):])  # task metrics: the mean over the batches
        per_batch = [{name: next(rest) for name in m} for m in metrics]
        self.last_valid = {"kind": "valid", "step": self.step, "epoch": self.epoch,
                           "valid_loss": valid_loss, "valid_ppl": valid_ppl,
                           "elapsed_s": self.elapsed(), "backend": self.backend.name,
                           **{f"valid_{name}": float(np.mean([m[name] for m in per_batch]))
                              for name in (per_batch[0] if per_batch else ())}}
        self.log.write(self.last_valid)
        self.best_ppl = min(valid_ppl, self.best_ppl or valid_ppl)
        self.write(f"| Eval {self.step // self.args.eval_interval:3d} at step {self.step:>8d} | "
                   f"time: {time.time() - started:5.2f}s | valid loss {valid_loss:5.2f} | "
                   f"valid ppl {valid_ppl:5.2f} | best ppl {self.best_ppl:5.2f} ")
        return valid_loss

    # ------------------------------------------------------------------------------ loop
    def train(self):
        args = self.args
        if args.resume:
            self.resume()
            summary_path = os.path.join(self.work_dir, "train_summary.json")
            if self.step >= self.max_step and os.path.isfile(summary_path):  # e.g. a pipeline
                with open(summary_path) as f:  # rerun after a stop in the other backend's turn
                    summary = json.load(f)
                print(f"already finished: {self.step} steps, checkpoint "
                      f"{summary['final_checkpoint']}", flush=True)
                return summary
        elif latest_checkpoint_step(self.work_dir) is not None:
            raise TrainingError(f"{self.work_dir} already holds checkpoints of a run: pass "
                                f"--resume to continue it, or choose another --work_dir")
        if self.processes.is_main:
            self.start_files()
        else:
            self.log = NullLog()
        self.t_start = time.time()
        self.window_start = self.line_start = self.elapsed()
        self.window_losses = []
        if not args.no_progress and self.processes.is_main:
            from tqdm import tqdm
            self.bar = tqdm(total=self.max_step, initial=self.step, desc=f"train[{self.backend.name}]",
                            dynamic_ncols=True)
        try:
            who = f"rank {self.processes.rank}: " if self.processes.distributed else ""
            with StopRequest(who) as stop:
                self._loop(stop)
            self.flush()
            if self.last_valid is None or self.last_valid["step"] != self.step:
                self.evaluate()
            final_path = self.save(final=True)
        finally:
            if self.bar is not None:
                self.bar.close()
            self.log.close()
            self.backend.leave_processes()
        summary = {"backend": self.backend.name, "steps": self.step, "epochs": self.epoch,
                   "final_checkpoint": final_path, "elapsed_s": self.elapsed(),
                   "valid_loss": self.last_valid["valid_loss"],
                   "valid_ppl": self.last_valid["valid_ppl"],
                   "trainable_params": self.parameter_counts[0], "all_params": self.parameter_counts[1],
                   "peak_rss_mib": peak_rss_mib(),
                   **{k: v for k, v in self.last_valid.items()
                      if k.startswith("valid_") and k not in ("valid_loss", "valid_ppl")}}
        if self.processes.is_main:
            write_json(os.path.join(self.work_dir, "train_summary.json"), summary)
        self.write(f"done: {self.step} steps in {summary['elapsed_s']:.1f}s, valid loss "
                   f"{summary['valid_loss']:.4f}, checkpoint {final_path}")
        return summary

    def start_files(self):
        """Rank 0: the run's config, the model's config.json beside the checkpoints, the log."""
        args = self.args
        write_json(os.path.join(self.work_dir, "run_config.json"), self.run_config())
        if checkpoint_config(args.init_checkpoint) is not None:  # model.N.pt read back as this model
            write_config_beside(self.work_dir, self.config)
        elif not args.resume:  # one left by an earlier run would describe these checkpoints wrongly
            remove_config_beside(self.work_dir)
        self.log = JsonlLogWriter(os.path.join(self.work_dir, "train_log.jsonl"),
                                  resume_step=self.step if args.resume else None)
        if getattr(args, "tensorboard", None):
            from shared.train.tensorboard_log import TensorBoardLog
            self.log = TensorBoardLog(self.log, args.tensorboard,
                                      resume_step=self.step if args.resume else None)

    def _loop(self, stop):
        args = self.args
        save_due = False
        while self.step < self.max_step:
            for batch in self.train_set.train_batches(self.epoch, args.random_seed,
                                                      start_batch=self.batch_in_epoch):
                self.step += 1
                self.batch_in_epoch += 1
                self.backend.set_step(self.step)
                is_update = self.step % args.grad_acc == 0
                check_batch(batch, self.config)
                tokens, share, loss_scale = int(np.prod(batch["input"].shape)), 1.0, 1.0
                sync = {}  # one process: the backend's forward_backward as it always was called
                if self.processes.distributed:  # this rank's rows, its loss weighted by its share
                    share = loss_share(batch, self.processes, getattr(args, "class_weights", None))
                    batch = shard_rows(batch, self.processes)
                    loss_scale = self.processes.world_size * share  # the engines average
                    sync = {"sync": is_update}  # gradients averaged at the update's micro-batch
                try:
                    with self.watchdog.guard(f"the gradients of step {self.step}"):
                        loss = self.backend.forward_backward(batch, loss_scale / args.grad_acc,
                                                             args.label_smooth, **sync)
                        metrics = self.backend.take_metrics()  # a task's own, logged with the loss
                        lr = lr_at(args.lr, args.scheduler, self.step, args.warmup_step, self.max_step)
                        grad_norm = self.backend.update(lr, args.clip) if is_update else None
                except Exception as exc:
                    if self.backend.is_out_of_memory(exc):
                        raise TrainingError(
                            f"out of GPU memory at step {self.step} with --train_batch_size "
                            f"{args.train_batch_size} and --seq_len {args.seq_len}: lower "
                            f"--train_batch_size (raise --grad_acc to keep the effective "
                            f"batch) or --seq_len") from exc
                    if self.processes.distributed and isinstance(exc, RuntimeError):
                        raise self.lost_ranks(f"step {self.step}", exc) from exc
                    raise
                self.pending.append({"step": self.step, "epoch": self.epoch, "loss": loss,
                                     "grad_norm": grad_norm, "lr": lr, "metrics": metrics,
                                     "tokens": tokens, "share": share, "elapsed_s": self.elapsed()})
                if self.bar is not None:
                    self.bar.update(1)
                if self.step % args.log_interval == 0:
                    self.flush()
                    self.print_log_line()
                if self.step % args.eval_interval == 0:
                    self.evaluate()
                # A checkpoint due every --save_interval steps is written at the next update: a
                # state saved inside an accumulation window would lack the gradient summed so far.
                save_due = save_due or self.step % args.save_interval == 0
                saved = self.save() if save_due and is_update else None
                save_due = save_due and saved is None
                if self.on_step is not None:
                    self.on_step(self.step)
                signum = self.stop_agreed(stop) if is_update else None
                if signum is not None:
                    path = saved or self.save()
                    message = (f"stopped at step {self.step}; checkpoint {path}; rerun with "
                               f"--resume to continue" if self.processes.is_main else "")
                    raise TrainingInterrupted(message, signum)
                if self.step >= self.max_step:
                    return
            if args.max_epoch is not None and self.epoch >= args.max_epoch:
                return
            self.epoch += 1
            self.batch_in_epoch = 0


def train(args, backend_cls, on_step=None, datasets=None, resume_keys=()):
    with main_process_lock(args.work_dir, processes_of(args), RunLock):
        return Trainer(args, backend_cls, on_step=on_step, datasets=datasets,
                       resume_keys=resume_keys).train()
