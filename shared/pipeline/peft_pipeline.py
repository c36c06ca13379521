"""`bash work.sh --task peft`: every `--peft` method fine-tuned from one base on E2E, in both backends.

Stages (recorded in RUN_DIR/stages.json by the E2E pipeline's engine, so a rerun skips finished
stages and an interrupted one resumes: training from its checkpoints, the beam search from the
methods already searched):
  1 data     the E2E splits formatted and encoded (the test split cut to `test_limit` MRs)
  2 init     --init_checkpoint converted, or a small base GPT-2 trained from scratch (torch)
  3 tune     scripts/gpt2_ft.py --peft METHOD for each method of --methods, torch and jittor,
             from that base with the same data order, seed and dropout masks; each method with
             its own preset flags (learning rate, sizes)
  4 beam     scripts/gpt2_beam.py (the checkpoint names its method) + gpt2_decode.py, each run
  5 metrics  scripts/measure_scores.py: BLEU, NIST, METEOR, ROUGE-L, CIDEr of each run
  6 report   report.md + report.json: the LoRA paper's Table 3 laid out for both backends
             (trainable parameters as peft counts them, each metric per backend and torch -
             jittor, training time, peak memory), identical beams per method, loss agreement,
             one loss plot per method (both backends)
Peak memory is the training process's peak RSS on the CPU and the device's peak (NVML) on a GPU.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from shared.runtime.differences import beam_agreement
from shared.runtime.peak_memory import DevicePeakMemory
from shared.model.config import GPT2Config
from shared.model.peft_methods import METHODS, trainable_line
from shared.pipeline.engine import Pipeline
from shared.pipeline.report import format_value, markdown_table, render_report_md
from shared.pipeline.run_flags import run_parser

STAGES = ("data", "init", "tune", "beam", "metrics", "report")
METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
# The LoRA paper's Table 3 (GPT-2 M on E2E; BLEU, NIST, METEOR, ROUGE-L, CIDEr, trainable
# parameters), for the methods it lists, beside this run's rows.
PAPER_TABLE_3 = {"full": (68.2, 8.62, 46.2, 71.0, 2.47, "354.92M"),
                 "top2": (68.1, 8.59, 46.0, 70.8, 2.41, "25.19M"),
                 "adapter": (66.3, 8.41, 45.0, 69.8, 2.40, "0.37M (Adapter-L)"),
                 "prefix": (69.7, 8.81, 46.1, 71.4, 2.49, "0.35M (PreLayer)"),
                 "lora": (70.4, 8.85, 46.8, 71.8, 2.53, "0.35M")}


def build_parser():
    p = run_parser(PeftPipeline,
                   "Every --peft method fine-tuned from one base on E2E with torch and with jittor "
                   "(same data order, seeds, dropout masks): beam search, metrics, a "
                   "Table-3-style report with loss curves per method.",
                   "pretrained GPT-2 (HF or microsoft/LoRA layout): skips base training (the "
                   "paper preset: GPT-2 M)", prog="work.sh --task peft", exact_dropout=True,
                   e2e_data=True)
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated --peft methods to run, in this order")
    return p


def parse_methods(text) -> list:
    """--methods: comma-separated names of METHODS, in the order given, each once."""
    methods = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods {text!r}: " + (f"unknown method(s) {', '.join(unknown)}"
                         if unknown else "no method") + f" (choose from {','.join(METHODS)})")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods {text!r}: a method is named twice")
    return methods


def method_flags(method, settings) -> dict:
    """gpt2_ft.py's flags of `method` from its preset entry (its lr is passed separately)."""
    flags = {k: v for k, v in settings.items() if k != "lr"}
    return dict(peft=method, **flags)


class PeftPipeline(Pipeline):
    """The E2E Pipeline's engine with one fine-tuning run per method and backend."""
    task = "peft"
    stages = STAGES
    run_name = "peft-{preset}"
    gpu_preset = "paper"

    def find_data(self):
        """The E2E folder, and the methods to run (each must have its preset's settings),
        before any folder is made."""
        super().find_data()
        self.seed_band = False
        self.methods = parse_methods(self.args.methods)
        missing = [m for m in self.methods if m not in self.s["method_settings"]]
        if missing:
            raise ValueError(f"--preset {self.settings.preset} has no settings for "
                             f"{', '.join(missing)}")

    def run_values(self):
        return dict(random_seed=self.args.random_seed, backends=self.backends,
                    init_checkpoint=self.args.init_checkpoint,
                    exact_dropout=self.args.exact_dropout, methods=self.methods)

    def stage_folders(self):
        return {"init": ["base"],
                "tune": [os.path.join(m, b) for m in self.methods for b in self.backends],
                "beam": [os.path.join(m, b, "beam") for m in self.methods for b in self.backends]}

    def model_config(self) -> GPT2Config:
        """The base model (no LoRA: each method's run builds its own from its flags)."""
        shape = dict(n_embd=self.s["n_embd"], n_layer=self.s["n_layer"], n_head=self.s["n_head"])
        from shared.model.pretrained import checkpoint_config
        found = checkpoint_config(self.args.init_checkpoint)
        if found is not None:
            return found.model_config(**shape, lora_attn_dim=0)
        return GPT2Config.from_model_card(self.s["model_card"], **shape, lora_attn_dim=0)

    def units(self):
        """(method, backend) of every fine-tuning run, method by method."""
        return [(m, b) for m in self.methods for b in self.backends]

    # ---------------------------------------------------------------------------- stages
    def tune_argv(self, method, backend):
        """gpt2_ft.py's command for `method` and `backend`: the run's settings from its settings
        file, the method's own (its lr among them) as flags."""
        settings = self.s["method_settings"][method]
        work = self.path(method, backend)
        return self.command("gpt2_ft.py", dict(
            backend=backend, train_data=self.path("data", "train.jsonl"),
            valid_data=self.path("data", "valid.jsonl"),
            init_checkpoint=self.path("base", "base.safetensors"),
            **method_flags(method, settings), train_batch_size=self.batch["train_batch_size"],
            lr=settings["lr"], correct_bias=True, random_seed=self.args.random_seed,
            work_dir=work, max_eval_batches=self.s["valid_batches"] or None, no_progress=True,
            shared_dropout=self.args.exact_dropout, resume=self._has_checkpoint(work)))

    def stage_tune(self):
        out = {}
        for method, backend in self.units():
            started = time.time()
            device_peak = DevicePeakMemory() if self.s["device"] == "cuda" else None
            self.sh(self.tune_argv(method, backend), f"{method}_{backend}_train.log")
            with open(self.path(method, backend, "train_summary.json")) as f:
                summary = json.load(f)
            out[f"{method}/{backend}"] = dict(
                summary, seconds=time.time() - started,
                peak_device_mib=device_peak.stop_mib() if device_peak else None)
        return out

    def stage_beam(self):
        """Each run's beam search and decoding; runs whose predictions are there (an earlier,
        interrupted try of this stage) are kept."""
        out = {}
        for method, backend in self.units():
            work = self.path(method, backend, "beam")
            if os.path.isfile(os.path.join(work, "e2e_pred.txt")):
                out[f"{method}/{backend}"] = {"kept": True}
                continue
            started = time.time()
            lora = self.s["method_settings"][method] if method == "lora" else {}
            argv = self.command("gpt2_beam.py", dict(
                backend=backend,
                init_checkpoint=self.path(method, backend, f"model.{self.s['max_step']}.pt"),
                **{k: lora[k] for k in ("lora_dim", "lora_alpha") if k in lora},
                **self.search_flags(), batch_size=self.s["beam_batch_size"], work_dir=work,
                output_file="predict.jsonl", unique_contexts=True, no_progress=True))
            self.sh(argv, f"{method}_{backend}_beam.log")
            beam_seconds = time.time() - started
            self.sh(self.command("gpt2_decode.py", dict(
                vocab=self.vocab_dir, sample_file=os.path.join(work, "predict.jsonl"),
                input_file=self.path("data", "test_formatted.jsonl"),
                output_ref_file=os.path.join(work, "e2e_ref.txt"),
                output_pred_file=os.path.join(work, "e2e_pred.txt"))),
                f"{method}_{backend}_decode.log")
            out[f"{method}/{backend}"] = {"beam_seconds": beam_seconds,
                                          "seconds": time.time() - started}
        return out

    def stage_metrics(self):
        out = {}
        for method, backend in self.units():
            work = self.path(method, backend, "beam")
            self.sh(self.command("measure_scores.py", dict(
                python=True, json=os.path.join(work, "metrics.json"),
                no_meteor=self.args.no_meteor),
                positional=[os.path.join(work, "e2e_ref.txt"), os.path.join(work, "e2e_pred.txt")]),
                f"{method}_{backend}_scores.log")
            with open(os.path.join(work, "metrics.json")) as f:
                out[f"{method}/{backend}"] = json.load(f)
        return out

    # ---------------------------------------------------------------------------- report
    def rows(self):
        """report.json's `methods`: per method, its counts and per backend its metrics, training
        time and peak memory, and (both backends) torch - jittor and the agreement."""
        from shared.train.trainlog import loss_agreement, read_log
        tuned = self.state["stages"]["tune"]["outputs"]
        scored = self.state["stages"]["metrics"]["outputs"]
        rows = {}
        for method in self.methods:
            first = tuned[f"{method}/{self.backends[0]}"]
            row = {"trainable_params": first["trainable_params"], "all_params": first["all_params"],
                   "trainable_line": trainable_line(first["trainable_params"], first["all_params"]),
                   "settings": self.s["method_settings"][method], "backends": {}}
            for backend in self.backends:
                summary = tuned[f"{method}/{backend}"]
                if (summary["trainable_params"], summary["all_params"]) != (
                        row["trainable_params"], row["all_params"]):
                    raise ValueError(f"{method}: the backends count different parameters "
                                     f"({self.path(method, backend, 'train_summary.json')})")
                peak = summary.get("peak_device_mib") if self.s["device"] == "cuda" else None
                row["backends"][backend] = {
                    "metrics": {k: scored[f"{method}/{backend}"].get(k) for k in METRICS},
                    "train_seconds": summary["elapsed_s"], "valid_loss": summary["valid_loss"],
                    "peak_memory_mib": peak if peak is not None else summary.get("peak_rss_mib"),
                    "peak_memory_kind": "device (NVML)" if peak is not None else "process RSS"}
            if len(self.backends) == 2:
                a, b = self.backends
                ma, mb = (row["backends"][x]["metrics"] for x in (a, b))
                row["difference"] = {k: (ma[k] - mb[k] if None not in (ma[k], mb[k]) else None)
                                     for k in METRICS}
                row["beam_agreement"] = beam_agreement(
                    [self.path(method, x, "beam", "predict.jsonl") for x in (a, b)])
                row["loss_agreement"] = loss_agreement(
                    *(read_log(self.path(method, x), label=x) for x in (a, b)))
            rows[method] = row
        return rows

    def table_md(self, rows) -> str:
        """Table 3 laid out for both backends: a row per method and backend, then torch - jittor."""
        headers = ["method", "backend", "trainable params", *METRICS, "train s", "peak MiB"]
        lines = []
        for method, row in rows.items():
            for backend, values in row["backends"].items():
                lines.append([method, backend, f"{row['trainable_params']:,d}",
                              *(values["metrics"][k] for k in METRICS),
                              round(values["train_seconds"], 1),
                              round(values["peak_memory_mib"] or 0.0, 1)])
            if "difference" in row:
                lines.append([method, " - ".join(self.backends), "",
                              *(row["difference"][k] for k in METRICS), "", ""])
        return markdown_table(headers, lines, digits=4)

    def agreement_md(self, rows) -> str:
        headers = ["method", "peft's trainable-parameter line", "identical beams",
                   "max abs train-loss difference", "valid loss " + " / ".join(self.backends)]
        lines = []
        for method, row in rows.items():
            beam = row.get("beam_agreement") or {}
            train = (row.get("loss_agreement") or {}).get("train") or {}
            lines.append([method, row["trainable_line"],
                          f"{beam.get('identical_predictions')} of {beam.get('total')}"
                          if beam else None, train.get("max_abs"),
                          " / ".join(format_value(v["valid_loss"]) for v in
                                     row["backends"].values())])
        return markdown_table(headers, lines)

    def paper_md(self) -> str:
        rows = [[m, *values] for m, values in PAPER_TABLE_3.items() if m in self.methods]
        if not rows:
            return ""
        return ("## The LoRA paper's Table 3, for comparison\n\nGPT-2 M (354.9M parameters) "
                "fine-tuned on the full E2E training set, BLEU / METEOR / ROUGE-L in percent; "
                "this run's model, data and steps are far smaller (see the settings), so compare "
                "the methods' order and the backends, not the values.\n\n"
                + markdown_table(["method", *METRICS, "trainable params"], rows))

    def stage_report(self):
        from shared.pipeline.plotting import plot_loss_comparison
        from shared.train.trainlog import read_log
        rows = self.rows()
        plots = {}
        for method in self.methods:
            logs = [read_log(self.path(method, b), label=b) for b in self.backends] + [None]
            name = f"loss_{method}.png"
            plot_loss_comparison(logs[0], logs[1], os.path.join(self.log_dir, name),
                                 f"{self.run}: --peft {method}, " + " vs ".join(self.backends))
            plots[f"loss {method}"] = name
            for backend in self.backends:  # the raw logs and predictions beside the report
                shutil.copyfile(self.path(method, backend, "train_log.jsonl"),
                                os.path.join(self.log_dir, f"{method}_{backend}_train_log.jsonl"))
                shutil.copyfile(self.path(method, backend, "beam", "e2e_pred.txt"),
                                os.path.join(self.log_dir, f"{method}_{backend}_e2e_pred.txt"))
        self.plot_base_loss(plots)
        test = self.state["stages"]["data"]["outputs"].get("test_limit")
        results = self.report_results(
            exact_dropout=self.args.exact_dropout, random_seed=self.args.random_seed,
            methods_run=self.methods, init=self.state["stages"]["init"]["outputs"].get("source"))
        results.update(test_mrs=test, methods=rows, plots=plots)
        sections = [self.summary_md(rows, test), "## Methods on E2E (Table 3 layout)\n\n"
                    + self.table_md(rows), "## Agreement of the backends per method\n\n"
                    + self.agreement_md(rows), self.paper_md()]
        _, _, tail = render_report_md(results, self.log_dir).partition("\n## ")
        markdown = "\n\n".join([f"# Report: {self.run}", f"Created {results['created']}.",
                                  *(s for s in sections if s), "## " + tail])
        return self.publish_report(results, markdown)

    def summary_md(self, rows, test) -> str:
        scope = (f"the first {test} meaning representations of the test split" if test
                 else "the whole test split")
        text = (f"{len(rows)} method(s) fine-tuned from one base for {self.s['max_step']} steps "
                f"each with {' and '.join(self.backends)}, beam search (beam "
                f"{self.s['beam']}) over {scope}.")
        if len(self.backends) == 2:
            same = sum(r["beam_agreement"]["identical_predictions"] for r in rows.values())
            total = sum(r["beam_agreement"]["total"] for r in rows.values())
            text += f" {same} of {total} predictions are identical across the backends."
        return text

    def stage_data(self):
        return dict(super().stage_data(), test_limit=self.s["test_limit"])
