"""The training loop of microsoft/LoRA's `gpt2_ft.py`, written once for both backends.

What depends on the framework (forward/backward, the optimizer update, moving data to the
device) sits behind a small backend object (`torch_impl.train.TorchBackend`,
`jittor_impl.train.JittorBackend`, twins); everything else lives here: data order, learning
rate schedule, gradient accumulation, logging, evaluation, checkpoints and resuming.

Semantics kept from the reference: `step` counts micro-batches; an update happens every
`grad_acc` micro-batches with learning rate `lr_at(step)`; `--max_step` counts micro-batches
(derived from `--max_epoch` when absent); intermediate checkpoints `model.{step}.pt` hold the
LoRA weights only (all weights for full fine-tuning), the final one all weights.
Additions: every step is logged as a JSON line; values are fetched from the device once per
`--log_interval` (and before each eval/save), so the loop does not wait on the GPU every step;
a non-finite loss stops the run naming the step; Ctrl-C (SIGINT/SIGTERM) finishes the current
update, saves a checkpoint and exits, and `--resume` continues exactly where it stopped.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import signal
import time

import numpy as np

from .atomic import atomic_path, write_json
from .batching import FTDataset
from .checkpoint import save_checkpoint
from .schedule import lr_at
from .train_args import model_config, validate
from .trainlog import JsonlLogWriter

# Arguments that change the result: a resumed run must use the same values.
RESUME_KEYS = ("train_data", "train_batch_size", "grad_acc", "clip", "seq_len", "model_card",
               "n_embd", "n_layer", "n_head", "lora_dim", "lora_alpha", "init_checkpoint",
               "lora_dropout", "label_smooth", "random_seed", "lr", "weight_decay",
               "correct_bias", "adam_epislon", "no_decay_bias", "adam_beta1", "adam_beta2",
               "scheduler", "max_step", "warmup_step", "shared_dropout", "max_epoch")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, out of memory, bad resume); message says why."""


class TrainingInterrupted(RuntimeError):
    """Stopped on request after saving a checkpoint; `--resume` continues."""


def no_decay(name: str) -> bool:
    """Biases and LayerNorm weights skip weight decay under --no_decay_bias."""
    return name.endswith(".bias") or ".ln_" in name


def optimizer_groups(names, weight_decay, no_decay_bias):
    """[(parameter names, weight decay)] as the reference's `create_grouped_parameters`."""
    if not no_decay_bias:
        return [(list(names), weight_decay)]
    groups = [([n for n in names if not no_decay(n)], weight_decay),
              ([n for n in names if no_decay(n)], 0.0)]
    return [g for g in groups if g[0]]


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads at update boundaries; a second SIGINT
    interrupts at once."""

    def __init__(self):
        self.requested, self._old = False, {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nsignal {signum}: finishing the current update, then saving a checkpoint "
              f"(Ctrl-C again to abort at once)", flush=True)

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers, Ctrl-C behaves as usual
            self._old = {}
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _latest_checkpoint(work_dir):
    steps = []
    for path in glob.glob(os.path.join(work_dir, "trainer_state.*.npz")):
        m = re.search(r"trainer_state\.(\d+)\.npz$", path)
        if m and os.path.isfile(os.path.join(work_dir, f"model.{m.group(1)}.pt")):
            steps.append(int(m.group(1)))
    return max(steps) if steps else None


def save_trainer_state(path, meta: dict, optimizer_state: dict):
    arrays = {f"optim/{k}": np.asarray(v) for k, v in optimizer_state.items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_trainer_state(path):
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(bytes(npz["meta"]).decode())
        optim = {k[len("optim/"):]: npz[k] for k in npz.files if k.startswith("optim/")}
    return meta, optim


class Trainer:
    def __init__(self, args, backend_cls, on_step=None):
        self.args = validate(args)
        self.on_step = on_step  # test hook: called with the step number after each step
        self.work_dir = args.work_dir
        os.makedirs(self.work_dir, exist_ok=True)
        self.config = model_config(args)
        self.train_set = FTDataset.from_file(args.train_data, args.train_batch_size, args.seq_len)
        self.valid_set = FTDataset.from_file(args.valid_data, args.valid_batch_size, args.seq_len)
        for dataset in (self.train_set, self.valid_set):
            report = dataset.truncation_report()
            if report:
                print(f"warning: {report}", flush=True)
        self.max_step = args.max_step or args.max_epoch * self.train_set.num_batches
        if args.warmup_step > self.max_step:
            raise TrainingError(f"--warmup_step {args.warmup_step} > max_step {self.max_step} "
                                f"(from --max_epoch {args.max_epoch})")
        self.backend = backend_cls(self.config, args)
        self.step, self.epoch, self.batch_in_epoch, self.elapsed_before = 0, 1, 0, 0.0
        self.pending = []  # per-step records whose device values are not fetched yet
        self.last_valid = None
        self.best_ppl = None

    # ---------------------------------------------------------------------------- state
    def run_config(self):
        config = {k: v for k, v in vars(self.args).items()}
        config["max_step"] = self.max_step
        return config

    def resume(self):
        step = _latest_checkpoint(self.work_dir)
        if step is None:
            raise TrainingError(f"--resume: no complete checkpoint (model.N.pt with "
                                f"trainer_state.N.npz) in {self.work_dir}")
        meta, optim = load_trainer_state(os.path.join(self.work_dir, f"trainer_state.{step}.npz"))
        saved, now = meta["run_config"], self.run_config()
        changed = [f"--{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in RESUME_KEYS
                   if saved.get(k) != now.get(k)]
        if changed:
            raise TrainingError("--resume with arguments that change the result:\n  "
                                + "\n  ".join(changed))
        from .checkpoint import load_for_model  # the saved trainable weights, checked
        state = load_for_model(os.path.join(self.work_dir, f"model.{step}.pt"), self.config,
                               base_loaded=True)
        self.backend.load_trainable(state)
        self.backend.load_optimizer_state(optim)
        self.step, self.epoch = meta["step"], meta["epoch"]
        self.batch_in_epoch, self.elapsed_before = meta["batch_in_epoch"], meta["elapsed_s"]
        print(f"resumed from step {step} (epoch {self.epoch}, batch {self.batch_in_epoch}) "
              f"in {self.work_dir}", flush=True)

    def save(self, final=False):
        self.flush()
        lora_only = self.config.lora_attn_dim > 0 and not final
        model_path = os.path.join(self.work_dir, f"model.{self.step}.pt")
        save_checkpoint(model_path, self.backend.state_numpy(lora_only=lora_only), layout="lora")
        meta = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "elapsed_s": self.elapsed(), "backend": self.backend.name,
                "run_config": self.run_config()}
        save_trainer_state(os.path.join(self.work_dir, f"trainer_state.{self.step}.npz"), meta,
                           self.backend.optimizer_state())
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
                                       if r["grad_norm"] is not None])
        losses, norms = values[:len(self.pending)], iter(values[len(self.pending):])
        now = self.elapsed()
        window = max(now - self.window_start, 1e-9)
        tokens_per_s = sum(r["tokens"] for r in self.pending) / window
        for record, loss in zip(self.pending, losses):
            if not math.isfinite(loss):
                raise TrainingError(f"loss is {loss} at step {record['step']} (epoch "
                                    f"{record['epoch']}): stopping. Lower --lr, set --clip, or "
                                    f"use fp32; the last saved checkpoint is untouched")
            norm = next(norms) if record["grad_norm"] is not None else None
            self.log.write({"kind": "train", "step": record["step"], "epoch": record["epoch"],
                            "loss": loss, "lr": record["lr"], "grad_norm": norm,
                            "tokens_per_s": tokens_per_s, "elapsed_s": record["elapsed_s"],
                            "backend": self.backend.name})
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

    def write(self, text):
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    # -------------------------------------------------------------------------- evaluate
    def evaluate(self):
        self.flush()
        started = time.time()
        losses = []
        for index, batch in enumerate(self.valid_set.eval_batches()):
            if self.args.max_eval_batches is not None and index >= self.args.max_eval_batches:
                break
            losses.append(self.backend.eval_loss(batch))
        valid_loss = float(np.mean(self.backend.fetch(losses)))
        valid_ppl = math.exp(min(valid_loss, 700.0))
        self.last_valid = {"kind": "valid", "step": self.step, "epoch": self.epoch,
                           "valid_loss": valid_loss, "valid_ppl": valid_ppl,
                           "elapsed_s": self.elapsed(), "backend": self.backend.name}
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
        elif _latest_checkpoint(self.work_dir) is not None:
            raise TrainingError(f"{self.work_dir} already holds checkpoints of a run: pass "
                                f"--resume to continue it, or choose another --work_dir")
        write_json(os.path.join(self.work_dir, "run_config.json"), self.run_config())
        self.log = JsonlLogWriter(os.path.join(self.work_dir, "train_log.jsonl"),
                                  resume_step=self.step if args.resume else None)
        if getattr(args, "tensorboard", None):
            from .tensorboard_log import TensorBoardLog
            self.log = TensorBoardLog(self.log, args.tensorboard)
        self.t_start = time.time()
        self.window_start = self.line_start = self.elapsed()
        self.window_losses = []
        self.bar = None
        if not args.no_progress:
            from tqdm import tqdm
            self.bar = tqdm(total=self.max_step, initial=self.step, desc=f"train[{self.backend.name}]",
                            dynamic_ncols=True)
        try:
            with StopRequest() as stop:
                self._loop(stop)
            self.flush()
            if self.last_valid is None or self.last_valid["step"] != self.step:
                self.evaluate()
            final_path = self.save(final=True)
        finally:
            if self.bar is not None:
                self.bar.close()
            self.log.close()
        summary = {"backend": self.backend.name, "steps": self.step, "epochs": self.epoch,
                   "final_checkpoint": final_path, "elapsed_s": self.elapsed(),
                   "valid_loss": self.last_valid["valid_loss"],
                   "valid_ppl": self.last_valid["valid_ppl"]}
        write_json(os.path.join(self.work_dir, "train_summary.json"), summary)
        self.write(f"done: {self.step} steps in {summary['elapsed_s']:.1f}s, valid loss "
                   f"{summary['valid_loss']:.4f}, checkpoint {final_path}")
        return summary

    def _loop(self, stop):
        args = self.args
        while self.step < self.max_step:
            for batch in self.train_set.train_batches(self.epoch, args.random_seed,
                                                      start_batch=self.batch_in_epoch):
                self.step += 1
                self.batch_in_epoch += 1
                self.backend.set_step(self.step)
                is_update = self.step % args.grad_acc == 0
                try:
                    loss = self.backend.forward_backward(batch, 1.0 / args.grad_acc,
                                                         args.label_smooth)
                    lr = lr_at(args.lr, args.scheduler, self.step, args.warmup_step, self.max_step)
                    grad_norm = self.backend.update(lr, args.clip) if is_update else None
                except Exception as exc:
                    if self.backend.is_out_of_memory(exc):
                        raise TrainingError(
                            f"out of GPU memory at step {self.step} with --train_batch_size "
                            f"{args.train_batch_size} and --seq_len {args.seq_len}: lower "
                            f"--train_batch_size (raise --grad_acc to keep the effective "
                            f"batch) or --seq_len") from exc
                    raise
                self.pending.append({"step": self.step, "epoch": self.epoch, "loss": loss,
                                     "grad_norm": grad_norm, "lr": lr,
                                     "tokens": int(np.prod(batch["input"].shape)),
                                     "elapsed_s": self.elapsed()})
                if self.bar is not None:
                    self.bar.update(1)
                if self.step % args.log_interval == 0:
                    self.flush()
                    self.print_log_line()
                if self.step % args.eval_interval == 0:
                    self.evaluate()
                saved = self.save() if self.step % args.save_interval == 0 else None
                if self.on_step is not None:
                    self.on_step(self.step)
                if stop.requested and is_update:
                    path = saved or self.save()
                    raise TrainingInterrupted(f"stopped at step {self.step}; checkpoint {path}; "
                                              f"rerun with --resume to continue")
                if self.step >= self.max_step:
                    return
            if args.max_epoch is not None and self.epoch >= args.max_epoch:
                return
            self.epoch += 1
            self.batch_in_epoch = 0


def train(args, backend_cls, on_step=None):
    return Trainer(args, backend_cls, on_step=on_step).train()
