"""`bash work.sh --task instruct`: instruction tuning on both backends, side by side.

Stages (recorded in RUN_DIR/stages.json by the E2E pipeline's machinery, so reruns skip
finished stages, interrupted training resumes, `--force_stage` redoes a stage and the later ones):
  1 data    the Alpaca JSON split by seed and encoded twice: all tokens scored (for the base) and
            response tokens only (for instruction tuning)
  2 init    --init_checkpoint converted, or a small base GPT-2 trained from scratch with torch on
            the training split's prompts and responses (full loss): the model must know some
            English before LoRA teaches it to answer
  3 tune    LoRA instruction tuning with `scripts/instruct_ft.py`, torch and jittor, same base,
            data order and seed (`--exact_dropout`: same dropout masks); --tensorboard events
  4 eval    each backend's responses for the held-out test split (greedy), ROUGE-L, perplexity
  5 check   the torch run's final weights in both backends: logits, loss, LoRA gradients
  6 report  report.md + report.json (in the run folder, or LOGS_DIR/<run> with --logs_dir):
            metrics side by side, loss agreement, response agreement, example responses, plots
Every stage runs the project's scripts, as the E2E pipeline does; shared/pipeline/task_pipelines.py
registers this pipeline for work.sh's --task dispatch.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from shared.model.checkpoint import load_for_model, save_checkpoint
from shared.model.config import GPT2Config
from shared.runtime.paths import REPO_ROOT, file_check, resolve_data_path
from shared.pipeline.engine import Pipeline
from shared.pipeline.run_flags import run_parser

STAGES = ("data", "init", "tune", "eval", "check", "report")
DEFAULT_DATA = os.path.join(REPO_ROOT, "..", "shared", "data", "instruct", "instruction-data.json")

EXAMPLES_SHOWN = 5


def build_parser():
    p = run_parser(InstructPipeline,
                   "Instruction tuning (Alpaca JSON) on both backends from identical weights and "
                   "seeds: data, base model, LoRA tuning, responses + ROUGE-L + perplexity, "
                   "final check, report.",
                   "pretrained GPT-2 (HF or microsoft/LoRA layout): skips base training",
                   prog="work.sh --task instruct", split_seed=True)
    p.add_argument("--data", default=None,
                   help="Alpaca JSON (else $INSTRUCT_DATA, else ../shared/data/instruct/"
                        "instruction-data.json)")
    p.add_argument("--full_loss", action="store_true",
                   help="instruction tuning scores every token (default: the response only)")
    return p


def resolve_data(flag, env="INSTRUCT_DATA", default=None, what="instruction data"):
    """The data file of an Alpaca-style task: --data, else $`env`, else `default` (this task's
    DEFAULT_DATA), checked to exist (resolve_data_path's rule)."""
    return os.path.abspath(resolve_data_path(flag, env, [default or DEFAULT_DATA], flag="--data",
                                             what=what, check=file_check))


class InstructPipeline(Pipeline):
    """The E2E Pipeline's engine (stages.json, resume, --force_stage, --until, the script
    runner) with the instruction-tuning data and stages."""
    task = "instruct"
    stages = STAGES
    run_name = "instruct-{preset}"

    def find_data(self):
        self.data_file = resolve_data(self.args.data)

    def stage_folders(self):
        return {"init": ["base"], "tune": list(self.backends)}

    def run_values(self):
        return dict(random_seed=self.args.random_seed, backends=self.backends,
                    init_checkpoint=self.args.init_checkpoint,
                    exact_dropout=self.args.exact_dropout, full_loss=self.args.full_loss,
                    split_seed=self.args.split_seed, data=self.data_file)

    # ---------------------------------------------------------------------------- stages
    def stage_data(self):
        from shared.text.instruct_data import prepare_instruct
        from shared.text.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(self.vocab_dir)
        counts = {}
        for folder, response_only in (("full", False), ("response", True)):
            counts[folder] = prepare_instruct(self.data_file, self.path("data", folder), tokenizer,
                                              self.args.split_seed, response_only=response_only,
                                              limit=self.s["limit"])
        return {"data": self.data_file, "entries": counts["response"]}

    def stage_init(self):
        base = self.path("base", "base.safetensors")
        base_config = GPT2Config(**dict(self.config.to_dict(), lora_attn_dim=0))
        if self.args.init_checkpoint:
            return self.save_base(base, base_config)
        work, steps = self.path("base"), self.s["base_steps"]
        argv = self.command("gpt2_ft.py", dict(  # full fine-tuning with the base_* settings
            backend="torch", train_data=self.path("data", "full", "train.jsonl"),
            valid_data=self.path("data", "full", "valid.jsonl"), lora_dim=0,
            train_batch_size=self.s["base_batch_size"], valid_batch_size=8,
            lr=self.s["base_lr"], weight_decay=0.01, correct_bias=True, clip=1.0,
            warmup_step=max(1, steps // 20), max_step=steps, scheduler="cosine",
            log_interval=max(1, steps // 10), eval_interval=steps,
            save_interval=max(1, steps // 4), random_seed=self.args.random_seed, work_dir=work,
            no_progress=True, resume=self._has_checkpoint(work)))
        self.sh(argv, "base_train.log")
        save_checkpoint(base, load_for_model(self.path("base", f"model.{steps}.pt"), base_config))
        return {"base": base, "source": "trained from scratch (torch, full loss on train split)"}

    def tune_argv(self, backend, **extra):
        """instruct_ft.py's command for `backend`; `extra`: the stage's own flags."""
        return self.command("instruct_ft.py", dict(
            backend=backend, data=self.data_file, split_seed=self.args.split_seed,
            vocab=self.vocab_dir, data_out=self.path("data", "response"),
            init_checkpoint=self.path("base", "base.safetensors"), valid_batch_size=8,
            weight_decay=0.01, correct_bias=True, clip=1.0, scheduler="linear", log_interval=10,
            random_seed=self.args.random_seed, work_dir=self.path(backend), attn="math",
            no_progress=True, **extra, full_loss=self.args.full_loss,
            shared_dropout=self.args.exact_dropout))

    def stage_tune(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            argv = self.tune_argv(backend, no_eval=True,
                                  tensorboard=self.path(backend, "tensorboard"),
                                  resume=self._has_checkpoint(self.path(backend)))
            self.sh(argv, f"{backend}_tune.log")
            out[backend] = {"seconds": time.time() - started}
        return out

    def stage_eval(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            self.sh(self.tune_argv(backend, eval_only=True), f"{backend}_eval.log")
            with open(self.path(backend, "instruct_eval.json")) as f:
                out[backend] = dict(json.load(f), seconds=time.time() - started)
        return out

    def stage_check(self):
        if len(self.backends) < 2:
            return {"skipped": "needs both backends"}
        argv = self.command("check_alignment.py", dict(
            init_checkpoint=self.path("base", "base.safetensors"),
            lora_checkpoint=self.path(self.backends[0], f"model.{self.s['max_step']}.pt"),
            data=self.path("data", "response", "valid.jsonl"), batch_size=4, batches=2,
            json=self.path("final_check.json")))
        self.sh(argv, "final_check.log")
        return {"json": self.path("final_check.json")}

    def stage_report(self):
        from shared.pipeline.plotting import plot_loss_comparison, plot_lr_schedule
        from shared.pipeline.report import render_report_md
        from shared.train.trainlog import loss_agreement, loss_table, read_log
        logs = {b: read_log(self.path(b), label=b) for b in self.backends}
        pair = [logs[b] for b in self.backends] + [None]
        plot_loss_comparison(pair[0], pair[1], os.path.join(self.log_dir, "loss.png"),
                             f"{self.run}: instruction tuning loss (response tokens)")
        plot_lr_schedule(list(logs.values()), os.path.join(self.log_dir, "lr.png"))
        plots = {"loss": "loss.png", "lr": "lr.png"}
        self.plot_base_loss(plots)
        evals, responses = {}, {}
        for backend in self.backends:
            with open(self.path(backend, "instruct_eval.json")) as f:
                evals[backend] = json.load(f)
            with open(self.path(backend, "test_responses.jsonl")) as f:
                responses[backend] = [json.loads(line) for line in f]
            shutil.copyfile(self.path(backend, "train_log.jsonl"),
                            os.path.join(self.log_dir, f"{backend}_train_log.jsonl"))
            shutil.copyfile(self.path(backend, "test_responses.jsonl"),
                            os.path.join(self.log_dir, f"{backend}_test_responses.jsonl"))
        metrics = {b: {"ROUGE_L": e["rouge_l"], "test_ppl": e["test_ppl"],
                       "test_loss": e["test_loss"], "test_entries": e["test_entries"]}
                   for b, e in evals.items()}
        data, init = (self.state["stages"].get(n, {}).get("outputs", {}) for n in ("data", "init"))
        results = dict(self.report_results(
            exact_dropout=self.args.exact_dropout, full_loss=self.args.full_loss,
            random_seed=self.args.random_seed, split_seed=self.args.split_seed,
            data=self.data_file, entries=data.get("entries"), init=init.get("source")),
            metrics=metrics, plots=plots)
        if len(self.backends) == 2:
            a, b = (logs[n] for n in self.backends)
            results["loss_agreement"] = loss_agreement(a, b)
            results["loss_table"] = loss_table(a, b)
            ra, rb = (responses[n] for n in self.backends)
            results["response_agreement"] = {
                "identical_responses": sum(x["response"] == y["response"] for x, y in zip(ra, rb)),
                "total": len(ra)}
            if os.path.isfile(self.path("final_check.json")):
                with open(self.path("final_check.json")) as f:
                    results["final_check"] = json.load(f)
        return self.publish_report(
            results, render_report_md(results, self.log_dir) + self.examples_md(results, responses))

    def examples_md(self, results, responses) -> str:
        """Response agreement and the first test entries with each backend's response."""
        lines = ["", "## Responses on the test split", ""]
        agreement = results.get("response_agreement")
        if agreement:
            lines += [f"{agreement['identical_responses']} of {agreement['total']} greedy "
                      f"responses are identical across the backends.", ""]
        first = responses[self.backends[0]]
        for index, row in enumerate(first[:EXAMPLES_SHOWN]):
            prompt = row["instruction"] + (f" / input: {row['input']}" if row["input"] else "")
            lines += [f"**{index + 1}. {prompt}**", "", f"- reference: {row['reference']}"]
            for backend in self.backends:
                lines.append(f"- {backend}: {responses[backend][index]['response']}")
            lines.append("")
        return "\n".join(lines)

