#!/usr/bin/env python
"""The end-to-end alignment run behind `bash work.sh`: both backends, identical weights and seeds.

Stages (each recorded in RUN_DIR/stages.json; a rerun skips finished stages unless --force):
  1 data     format + encode the E2E splits (E2E_DATA_DIR, --data_dir, or data/e2e)
  2 init     --init_checkpoint converted to the backend-neutral format, or a small base model
             trained from scratch on the training split (full fine-tuning), written once
  3 lora     LoRA fine-tuning with the torch backend and with the jittor backend from that base
  4 beam     beam search over the test split and decoding, for each backend
  5 check    both backends on the final weights: logits and gradients on validation batches
  6 metrics  the E2E metrics of each backend's predictions (METEOR etc. need Java)
  7 report   logs/<run>/report.md + report.json with metrics side by side, loss agreement, plots
Run artefacts (data, checkpoints, predictions) live in runs/<run>/; the report and plots in
logs/<run>/. Every stage runs the project's own command-line scripts, so what is measured here
is exactly what a user runs.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from shared.atomic import write_json  # noqa: E402
from shared.checkpoint import load_for_model, save_checkpoint  # noqa: E402
from shared.config import GPT2Config  # noqa: E402
from shared.paths import resolve_e2e_dir, resolve_vocab_dir  # noqa: E402

BACKENDS = ("torch", "jittor")
STAGES = ("data", "init", "lora", "beam", "check", "metrics", "report")

# Defaults: a CPU run that finishes in about 15 minutes on 2 cores, and a GPU run that scales up.
PRESETS = {
    "cpu": dict(device="cpu", model_card="gpt2.sm", n_embd=96, n_layer=3, n_head=4, seq_len=96,
                precision="fp32", base_steps=700, base_lr=0.002, base_batch_size=8,
                max_step=150, train_batch_size=8, lr=0.002, warmup_step=20, lora_dim=4,
                lora_alpha=32, lora_dropout=0.1, beam=10, eval_len=48, beam_batch_size=63,
                test_limit=None, eval_interval=50, save_interval=50, valid_batches=8),
    "cuda": dict(device="cuda", model_card="gpt2.md", n_embd=None, n_layer=None, n_head=None,
                 seq_len=128, precision="bf16", base_steps=800, base_lr=0.0005,
                 base_batch_size=16, max_step=600, train_batch_size=8, lr=0.0002,
                 warmup_step=100, lora_dim=4, lora_alpha=32, lora_dropout=0.1, beam=10,
                 eval_len=64, beam_batch_size=126, test_limit=None, eval_interval=200,
                 save_interval=200, valid_batches=None),
    "micro": dict(device="cpu", model_card="gpt2.sm", n_embd=32, n_layer=2, n_head=2, seq_len=64,
                  precision="fp32", base_steps=6, base_lr=0.003, base_batch_size=4, max_step=6,
                  train_batch_size=4, lr=0.003, warmup_step=2, lora_dim=4, lora_alpha=16,
                  lora_dropout=0.1, beam=2, eval_len=8, beam_batch_size=8, test_limit=6,
                  eval_interval=3, save_interval=3, valid_batches=2),
}


def build_parser():
    p = argparse.ArgumentParser(
        prog="work.sh", description="End-to-end E2E run on both backends from identical weights "
        "and seeds: data, base model, LoRA fine-tuning, beam search, metrics, report, plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="defaults to use: cuda when a GPU is present, else cpu; micro is a "
                        "seconds-long smoke run")
    p.add_argument("--run", default=None, help="run name (default: <preset>-default)")
    p.add_argument("--runs_dir", default=os.path.join(ROOT, "runs"))
    p.add_argument("--logs_dir", default=os.path.join(ROOT, "logs"))
    p.add_argument("--data_dir", default=None, help="E2E .txt folder (else E2E_DATA_DIR, data/e2e)")
    p.add_argument("--vocab_dir", default=None, help="GPT-2 vocab (else GPT2_VOCAB_DIR, tiktoken)")
    p.add_argument("--backends", default="torch,jittor", help="comma-separated")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--force_stage", action="append", default=[], choices=STAGES,
                   help="rerun this stage and the ones after it")
    p.add_argument("--until", default=None, choices=STAGES,
                   help="stop after this stage (e.g. generate on a GPU machine without Java, "
                        "score elsewhere)")
    p.add_argument("--init_checkpoint", default=None,
                   help="pretrained GPT-2 (HF or microsoft/LoRA layout): skips base training")
    p.add_argument("--exact_dropout", action="store_true",
                   help="draw LoRA dropout masks from one backend-neutral generator, so the two "
                        "runs match step for step (default: each framework's own RNG)")
    p.add_argument("--no_meteor", action="store_true", help="skip METEOR (needs Java)")
    p.add_argument("--random_seed", type=int, default=10)
    tunables = sorted({k for preset in PRESETS.values() for k in preset})
    types = {"device": str, "model_card": str, "precision": str, "base_lr": float, "lr": float,
             "lora_dropout": float}
    for key in tunables:
        p.add_argument(f"--{key}", type=types.get(key, int), default=None,
                       help="override the preset's value")
    return p


def settings_from(args):
    preset = args.preset or ("cuda" if _cuda_available() else "cpu")
    settings = dict(PRESETS[preset])
    for key in settings:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    settings["preset"] = preset
    return settings


def _cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


class Pipeline:
    STAGES = STAGES  # a task's pipeline (e.g. shared/instruct_pipeline.py) names its own

    def __init__(self, args):
        self.args = args
        self.s = settings_from(args)
        self.run = args.run or f"{self.s['preset']}-default"
        self.run_dir = os.path.join(args.runs_dir, self.run)
        self.log_dir = os.path.join(args.logs_dir, self.run)
        self.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = set(self.backends) - set(BACKENDS)
        if unknown or not self.backends:
            raise SystemExit(f"work.sh: --backends must name torch and/or jittor, got {args.backends!r}")
        self.data_dir = resolve_e2e_dir(args.data_dir)
        self.vocab_dir = resolve_vocab_dir(args.vocab_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self.state_path = os.path.join(self.run_dir, "stages.json")
        self.stage_folders = {"init": ["base"], "lora": list(self.backends)}
        self.state = self._load_state()
        self.config = GPT2Config.from_model_card(
            self.s["model_card"], n_embd=self.s["n_embd"], n_layer=self.s["n_layer"],
            n_head=self.s["n_head"], lora_attn_dim=self.s["lora_dim"],
            lora_attn_alpha=self.s["lora_alpha"])

    # --------------------------------------------------------------------------- helpers
    def _load_state(self):
        if os.path.isfile(self.state_path):
            with open(self.state_path) as f:
                state = json.load(f)
            if state.get("settings") != self._fingerprint():
                print("settings changed since the last run of this folder: rerunning all stages")
                return {"settings": self._fingerprint(), "stages": {}}
            return state
        return {"settings": self._fingerprint(), "stages": {}}

    def _fingerprint(self):
        keys = dict(self.s, init_checkpoint=self.args.init_checkpoint,
                    exact_dropout=self.args.exact_dropout, random_seed=self.args.random_seed,
                    backends=self.args.backends)
        return json.loads(json.dumps(keys))

    def path(self, *parts):
        return os.path.join(self.run_dir, *parts)

    def shape_flags(self):
        flags = ["--model_card", self.s["model_card"]]
        for key in ("n_embd", "n_layer", "n_head"):
            if self.s[key] is not None:
                flags += [f"--{key}", str(self.s[key])]
        return flags

    def sh(self, argv, log_name):
        """Run a project script, streaming its output and keeping a copy in RUN_DIR/logs."""
        cmd = [sys.executable, *argv]
        os.makedirs(self.path("logs"), exist_ok=True)
        log_path = self.path("logs", log_name)
        print("$ " + " ".join(argv), flush=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.vocab_dir:
            env["GPT2_VOCAB_DIR"] = self.vocab_dir
        with open(log_path, "a") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"`{' '.join(argv)}` failed with exit code {code} (log: {log_path})")

    def stage(self, name, func):
        STAGES = self.STAGES
        forced = self.args.force or any(STAGES.index(name) >= STAGES.index(f)
                                        for f in self.args.force_stage)
        done = self.state["stages"].get(name)
        print(f"\n=== stage {STAGES.index(name) + 1}/{len(STAGES)}: {name} ===", flush=True)
        if done and done.get("status") == "done" and not forced:
            print(f"(done in an earlier run, {done['seconds']:.1f}s; --force_stage {name} reruns it)")
            return done.get("outputs", {})
        started = time.time()
        if forced:  # a forced stage starts over instead of resuming its earlier checkpoints
            for folder in self.stage_folders.get(name, ()):
                shutil.rmtree(self.path(folder), ignore_errors=True)
        try:
            outputs = func() or {}
        except Exception as exc:
            self.state["stages"][name] = {"status": "failed", "seconds": time.time() - started,
                                          "error": str(exc)}
            write_json(self.state_path, self.state)
            raise
        self.state["stages"][name] = {"status": "done", "seconds": time.time() - started,
                                      "outputs": outputs}
        for later in STAGES[STAGES.index(name) + 1:]:  # results after this one are stale now
            if forced:
                self.state["stages"].pop(later, None)
        write_json(self.state_path, self.state)
        print(f"--- {name}: {time.time() - started:.1f}s", flush=True)
        return outputs

    # ---------------------------------------------------------------------------- stages
    def stage_data(self):
        from shared.e2e_data import prepare_e2e
        written = prepare_e2e(self.data_dir, self.path("data"), vocab_dir=self.vocab_dir)
        if self.s["test_limit"]:
            self._limit_test_split(self.s["test_limit"])
        return {"data_dir": self.data_dir, "written": written}

    def _limit_test_split(self, n_mrs):
        """Keep the lines of the first n distinct MRs of the test split (smoke runs)."""
        with open(self.path("data", "test_formatted.jsonl")) as f:
            formatted = f.readlines()
        with open(self.path("data", "test.jsonl")) as f:
            encoded = f.readlines()
        keep, seen = [], []
        for index, line in enumerate(formatted):
            mr = json.loads(line)["context"]
            if mr not in seen:
                if len(seen) == n_mrs:
                    break
                seen.append(mr)
            keep.append(index)
        from shared.atomic import write_text
        write_text(self.path("data", "test_formatted.jsonl"), "".join(formatted[i] for i in keep))
        write_text(self.path("data", "test.jsonl"), "".join(encoded[i] for i in keep))

    def stage_init(self):
        base = self.path("base", "base.safetensors")
        base_config = GPT2Config(**dict(self.config.to_dict(), lora_attn_dim=0))
        if self.args.init_checkpoint:
            state = load_for_model(self.args.init_checkpoint, base_config)
            save_checkpoint(base, state)
            return {"base": base, "source": self.args.init_checkpoint}
        work = self.path("base")
        argv = ["scripts/gpt2_ft.py", "--backend", "torch", "--device", self.s["device"],
                "--train_data", self.path("data", "train.jsonl"),
                "--valid_data", self.path("data", "valid.jsonl"), *self.shape_flags(),
                "--lora_dim", "0", "--train_batch_size", str(self.s["base_batch_size"]),
                "--valid_batch_size", "16", "--seq_len", str(self.s["seq_len"]),
                "--lr", str(self.s["base_lr"]), "--weight_decay", "0.01", "--correct_bias",
                "--clip", "1.0", "--warmup_step", str(max(1, self.s["base_steps"] // 20)),
                "--max_step", str(self.s["base_steps"]), "--scheduler", "cosine",
                "--log_interval", str(max(1, self.s["base_steps"] // 10)),
                "--eval_interval", str(self.s["base_steps"]), "--save_interval",
                str(max(1, self.s["base_steps"] // 4)), "--precision", self.s["precision"],
                "--random_seed", str(self.args.random_seed), "--work_dir", work]
        if self.s["valid_batches"]:
            argv += ["--max_eval_batches", str(self.s["valid_batches"])]
        if self._has_checkpoint(work):
            argv.append("--resume")
        self.sh(argv, "base_train.log")
        state = load_for_model(self.path("base", f"model.{self.s['base_steps']}.pt"), base_config)
        save_checkpoint(base, state)
        return {"base": base, "source": "trained from scratch (torch, full fine-tuning)"}

    @staticmethod
    def _has_checkpoint(work_dir):
        return os.path.isdir(work_dir) and any(
            n.startswith("trainer_state.") for n in os.listdir(work_dir))

    def lora_argv(self, backend):
        argv = ["scripts/gpt2_ft.py", "--backend", backend, "--device", self.s["device"],
                "--train_data", self.path("data", "train.jsonl"),
                "--valid_data", self.path("data", "valid.jsonl"), *self.shape_flags(),
                "--init_checkpoint", self.path("base", "base.safetensors"),
                "--lora_dim", str(self.s["lora_dim"]), "--lora_alpha", str(self.s["lora_alpha"]),
                "--lora_dropout", str(self.s["lora_dropout"]),
                "--train_batch_size", str(self.s["train_batch_size"]), "--valid_batch_size", "16",
                "--seq_len", str(self.s["seq_len"]), "--lr", str(self.s["lr"]),
                "--weight_decay", "0.01", "--correct_bias", "--warmup_step", str(self.s["warmup_step"]),
                "--max_step", str(self.s["max_step"]), "--scheduler", "linear",
                "--label_smooth", "0.1", "--log_interval", "10",
                "--eval_interval", str(self.s["eval_interval"]),
                "--save_interval", str(self.s["save_interval"]), "--precision", self.s["precision"],
                "--random_seed", str(self.args.random_seed), "--work_dir", self.path(backend),
                "--attn", "math"]
        if self.s["valid_batches"]:
            argv += ["--max_eval_batches", str(self.s["valid_batches"])]
        if self.args.exact_dropout:
            argv.append("--shared_dropout")
        if self._has_checkpoint(self.path(backend)):
            argv.append("--resume")
        return argv

    def stage_lora(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            self.sh(self.lora_argv(backend), f"{backend}_train.log")
            out[backend] = {"checkpoint": self.path(backend, f"model.{self.s['max_step']}.pt"),
                            "seconds": time.time() - started}
        return out

    def stage_beam(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            work = self.path(backend)
            argv = ["scripts/gpt2_beam.py", "--backend", backend, "--device", self.s["device"],
                    "--data", self.path("data", "test.jsonl"), *self.shape_flags(),
                    "--init_checkpoint", os.path.join(work, f"model.{self.s['max_step']}.pt"),
                    "--lora_dim", str(self.s["lora_dim"]), "--lora_alpha", str(self.s["lora_alpha"]),
                    "--batch_size", str(self.s["beam_batch_size"]), "--seq_len", str(self.s["seq_len"] + self.s["eval_len"]),
                    "--eval_len", str(self.s["eval_len"]), "--beam", str(self.s["beam"]),
                    "--length_penalty", "0.8", "--no_repeat_ngram_size", "4",
                    "--repetition_penalty", "1.0", "--eos_token_id", "628",
                    "--work_dir", work, "--output_file", "predict.jsonl", "--unique_contexts"]
            self.sh(argv, f"{backend}_beam.log")
            beam_seconds = time.time() - started
            vocab = ["--vocab", self.vocab_dir] if self.vocab_dir else []
            self.sh(["scripts/gpt2_decode.py", *vocab, "--sample_file", os.path.join(work, "predict.jsonl"),
                     "--input_file", self.path("data", "test_formatted.jsonl"),
                     "--output_ref_file", os.path.join(work, "e2e_ref.txt"),
                     "--output_pred_file", os.path.join(work, "e2e_pred.txt")], f"{backend}_decode.log")
            out[backend] = {"beam_seconds": beam_seconds, "seconds": time.time() - started}
        return out

    def stage_metrics(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            work = self.path(backend)
            score_argv = ["scripts/measure_scores.py", os.path.join(work, "e2e_ref.txt"),
                          os.path.join(work, "e2e_pred.txt"), "-p",
                          "--json", os.path.join(work, "metrics.json")]
            if self.args.no_meteor:
                score_argv.append("--no_meteor")
            self.sh(score_argv, f"{backend}_scores.log")
            with open(os.path.join(work, "metrics.json")) as f:
                out[backend] = json.load(f)
            out[backend]["seconds"] = time.time() - started
        return out

    def stage_check(self):
        backend = self.backends[0]
        argv = ["scripts/check_alignment.py", "--init_checkpoint", self.path("base", "base.safetensors"),
                "--lora_checkpoint", self.path(backend, f"model.{self.s['max_step']}.pt"),
                "--data", self.path("data", "valid.jsonl"), *self.shape_flags(),
                "--lora_dim", str(self.s["lora_dim"]), "--lora_alpha", str(self.s["lora_alpha"]),
                "--seq_len", str(self.s["seq_len"]), "--batch_size", "4", "--batches", "2",
                "--label_smooth", "0.1", "--device", self.s["device"],
                "--json", self.path("final_check.json")]
        if len(self.backends) < 2:
            return {"skipped": "needs both backends"}
        self.sh(argv, "final_check.log")
        return {"json": self.path("final_check.json")}

    def stage_report(self):
        from shared.plotting import plot_loss_comparison, plot_lr_schedule
        from shared.report import write_report
        from shared.trainlog import loss_agreement, loss_table, read_log
        logs = {b: read_log(self.path(b), label=b) for b in self.backends}
        plots = {}
        if len(self.backends) == 2:
            a, b = (logs[n] for n in self.backends)
            plot_loss_comparison(a, b, os.path.join(self.log_dir, "loss.png"),
                                 f"{self.run}: LoRA fine-tuning loss, torch vs jittor")
            plots["loss"] = "loss.png"
        else:
            only = logs[self.backends[0]]
            plot_loss_comparison(only, None, os.path.join(self.log_dir, "loss.png"), f"{self.run}: loss")
            plots["loss"] = "loss.png"
        plot_lr_schedule(list(logs.values()), os.path.join(self.log_dir, "lr.png"))
        plots["lr"] = "lr.png"
        base_log = self.path("base", "train_log.jsonl")
        if os.path.isfile(base_log):
            plot_loss_comparison(read_log(base_log, label="base (torch)"), None,
                                 os.path.join(self.log_dir, "base_loss.png"),
                                 f"{self.run}: base model trained from scratch")
            plots["base_loss"] = "base_loss.png"
        metrics = {}
        for backend in self.backends:
            with open(self.path(backend, "metrics.json")) as f:
                metrics[backend] = json.load(f)
        results = {
            "run": self.run, "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "devices": self.devices(), "versions": self.versions(),
            "config": dict(self.s, exact_dropout=self.args.exact_dropout,
                           random_seed=self.args.random_seed,
                           init=self.state["stages"].get("init", {}).get("outputs", {}).get("source")),
            "stages": [{"name": n, "seconds": round(v.get("seconds", 0.0), 1), "status": v["status"]}
                       for n, v in self.state["stages"].items()],
            "metrics": metrics, "plots": plots,
        }
        if len(self.backends) == 2:
            a, b = (logs[n] for n in self.backends)
            results["loss_agreement"] = loss_agreement(a, b)
            results["loss_table"] = loss_table(a, b)
            results["beam_agreement"] = self.beam_agreement()
            if os.path.isfile(self.path("final_check.json")):
                with open(self.path("final_check.json")) as f:
                    results["final_check"] = json.load(f)
        for backend in self.backends:  # keep the raw training logs next to the report
            shutil.copyfile(self.path(backend, "train_log.jsonl"),
                            os.path.join(self.log_dir, f"{backend}_train_log.jsonl"))
            shutil.copyfile(self.path(backend, "e2e_pred.txt"),
                            os.path.join(self.log_dir, f"{backend}_e2e_pred.txt"))
        write_report(self.log_dir, results)
        print(f"report: {os.path.join(self.log_dir, 'report.md')}")
        return {"report": os.path.join(self.log_dir, "report.md")}

    def beam_agreement(self):
        preds = []
        for backend in self.backends:
            with open(self.path(backend, "predict.jsonl")) as f:
                preds.append([json.loads(line)["predict"] for line in f])
        same = sum(p == q for p, q in zip(*preds))
        return {"identical_predictions": same, "total": len(preds[0])}

    def devices(self):
        info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "device": self.s["device"]}
        try:
            import torch
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        except ImportError:
            pass
        return info

    def versions(self):
        out = {"python": platform.python_version()}
        for name in ("torch", "numpy", "tiktoken", "jittor"):
            try:
                if name == "jittor":
                    out[name] = subprocess.run(
                        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('jittor'))"],
                        capture_output=True, text=True).stdout.strip()
                else:
                    out[name] = __import__(name).__version__
            except Exception:
                out[name] = "unavailable"
        return out

    def run_all(self):
        started = time.time()
        print(f"work.sh: run {self.run!r} ({self.s['preset']} preset) -> {self.run_dir}, "
              f"report in {self.log_dir}")
        print("settings: " + ", ".join(f"{k}={v}" for k, v in self.s.items()))
        for name in self.STAGES:
            self.stage(name, getattr(self, f"stage_{name}"))
            if name == self.args.until:
                print(f"\nstopped after stage {name} (--until) in {time.time() - started:.1f}s")
                return
        print(f"\nall stages done in {time.time() - started:.1f}s")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        Pipeline(args).run_all()
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"\nwork.sh: stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
