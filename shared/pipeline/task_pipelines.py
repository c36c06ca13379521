"""`bash work.sh --task pretrain|classify|instruct`: the E2E pipeline's engine for other tasks.

Each task is a `Pipeline` (shared/pipeline/engine.py) with its own stages, presets and report: the
stage engine (stages.json, resume, --force/--force_stage/--until), the subprocess runner with
logs, device and version records are the E2E pipeline's, called as they are. Every training and
evaluation stage runs the project's own scripts, on both backends from the same seed.

pretrain  data -> train (scripts/pretrain.py, torch and jittor) -> sample (scripts/generate.py:
          each backend's final model sampled by both backends with one seed) -> report
classify  data (seeded splits written as label<TAB>text) -> train (scripts/classify_ft.py, both
          backends) -> evaluate (scripts/classify.py: each model scored on the test split by
          both backends) -> report
instruct  shared/pipeline/instruct_pipeline.py (its own presets and stages), registered here
peft      shared/pipeline/peft_pipeline.py: every --peft method on E2E, a Table-3-style report
dpo       shared/pipeline/preference_pipeline.py: SFT -> reward model -> DPO -> the reward
          model's win rate of DPO over SFT, registered here
rlhf      the same file: SFT -> reward model -> PPO against it -> the win rate of PPO over SFT
Reports: report.md + report.json, loss plots, the raw training logs, in the run folder (or
LOGS_DIR/<run> with --logs_dir).
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from shared.runtime.atomic import write_text
from shared.runtime.paths import REPO_ROOT, resolve_data_path
from shared.pipeline.instruct_pipeline import InstructPipeline
from shared.pipeline.instruct_pipeline import build_parser as build_instruct_parser
from shared.pipeline.engine import Pipeline, run_to_end
from shared.pipeline.peft_pipeline import PeftPipeline, parse_methods
from shared.pipeline.peft_pipeline import build_parser as build_peft_parser
from shared.pipeline.preference_pipeline import PreferencePipeline, RLHFPipeline
from shared.pipeline.preference_pipeline import build_parser as build_preference_parser
from shared.pipeline.run_flags import run_parser

VERDICT = os.path.join("..", "shared", "data", "text", "the-verdict.txt")
SMS_SPAM = os.path.join("..", "shared", "data", "sms-spam", "SMSSpamCollection")

STAGES = {"pretrain": ("data", "train", "sample", "report"),
          "classify": ("data", "train", "evaluate", "report")}


def build_parser(task):
    p = run_parser(PIPELINES[task],
                   f"The {task} task on both backends from identical weights and seeds: stages "
                   f"{', '.join(STAGES[task])}; report in the run folder (or LOGS_DIR/<run>).",
                   "start from these weights (default: a seeded random init)",
                   prog=f"work.sh --task {task}")
    if task == "pretrain":
        p.add_argument("--text", nargs="+", default=None, help="UTF-8 text files (else "
                       "TEXT_DATA, else ../shared/data/text/the-verdict.txt)")
        p.add_argument("--prompt", default="Every effort moves you")
    else:
        p.add_argument("--data", default=None, help="label<TAB>text file (else SMS_SPAM_DATA, "
                       "else ../shared/data/sms-spam/SMSSpamCollection)")
    return p




class TaskPipeline(Pipeline):
    """The E2E Pipeline's engine with a task's settings; subclasses add the stages (and name
    the task, its stages and run)."""
    task = None

    def find_data(self):
        """Nothing to find first: data_files() resolves the task's files when they are needed."""

    def stage_folders(self):
        return {"train": list(self.backends)}

    def configure(self):
        """Nothing: the scripts take the model's shape from the run's settings file."""

    def run_values(self):
        return dict(random_seed=self.args.random_seed, backends=self.backends,
                    init_checkpoint=self.args.init_checkpoint,
                    exact_dropout=self.args.exact_dropout, data=self.data_files())

    def common_train_flags(self, backend):
        """The flags every task's training script takes (train_args.py) beside the run's
        settings, as {flag: value}."""
        return dict(
            backend=backend, train_batch_size=self.s["batch_size"],
            valid_batch_size=self.s["batch_size"], scheduler="cosine", correct_bias=True,
            clip=1.0, log_interval=10, save_interval=self.s["eval_interval"],
            random_seed=self.args.random_seed, work_dir=self.path(backend), no_progress=True,
            attn="math" if self.s["device"] == "cpu" or backend == "jittor" else None,
            vocab=self.vocab_dir, init_checkpoint=(os.path.abspath(self.args.init_checkpoint)
                                                   if self.args.init_checkpoint else None),
            resume=self._has_checkpoint(self.path(backend)))

    def training_logs(self):
        from shared.train.trainlog import read_log
        return {b: read_log(self.path(b), label=b) for b in self.backends}

    def write_task_report(self, title, metrics, extra_sections, extra_results):
        """report.md/json: the E2E report's sections (metrics side by side, loss agreement,
        plots, settings, stage timings, devices, versions) plus the task's own sections."""
        from shared.pipeline.plotting import plot_loss_comparison, plot_lr_schedule
        from shared.pipeline.report import render_report_md
        from shared.train.trainlog import loss_agreement, loss_table
        logs = self.training_logs()
        plots = {"loss": "loss.png", "lr": "lr.png"}
        pair = [logs[b] for b in self.backends] + [None]
        plot_loss_comparison(pair[0], pair[1], os.path.join(self.log_dir, "loss.png"),
                             f"{self.run}: {title}, " + " vs ".join(self.backends))
        plot_lr_schedule(list(logs.values()), os.path.join(self.log_dir, "lr.png"))
        results = dict(self.report_results(
            random_seed=self.args.random_seed, exact_dropout=self.args.exact_dropout,
            data=self.data_files(),
            init=self.args.init_checkpoint or "seeded random init (from scratch)"),
            metrics=metrics, plots=plots, **extra_results)
        if len(self.backends) == 2:
            results["loss_agreement"] = loss_agreement(*pair[:2])
            results["loss_table"] = loss_table(*pair[:2])
        for backend in self.backends:
            shutil.copyfile(self.path(backend, "train_log.jsonl"),
                            os.path.join(self.log_dir, f"{backend}_train_log.jsonl"))
        markdown = render_report_md(results, self.log_dir)
        head, _, tail = markdown.partition("\n## ")
        markdown = head + "\n" + "\n\n".join(extra_sections) + "\n\n## " + tail
        return self.publish_report(results, markdown)


class PretrainPipeline(TaskPipeline):
    task = "pretrain"
    stages = STAGES["pretrain"]
    run_name = "pretrain-{preset}"

    def run_values(self):
        return dict(super().run_values(), prompt=self.args.prompt)

    def data_files(self):
        paths = resolve_data_path(self.args.text, "TEXT_DATA", [[os.path.join(REPO_ROOT, VERDICT)]],
                                  flag="--text", what="text", many=True)
        return [os.path.abspath(p) for p in paths]

    def stage_data(self):
        from shared.text.text_data import split_tail, token_stream
        from shared.text.tokenizer import load_tokenizer
        tokens = token_stream(self.data_files(), load_tokenizer(self.vocab_dir))
        train, valid = split_tail(tokens, self.s["valid_fraction"], self.s["seq_len"])
        return {"files": self.data_files(), "tokens": len(tokens), "train_tokens": len(train),
                "valid_tokens": len(valid)}

    def stage_train(self):
        out = {}
        for backend in self.backends:
            argv = self.command("pretrain.py", dict(
                self.common_train_flags(backend), text=self.data_files(), weight_decay=0.1,
                prompt=self.args.prompt))
            self.sh(argv, f"{backend}_train.log")
            with open(self.path(backend, "train_summary.json")) as f:
                out[backend] = json.load(f)
        return out

    def stage_sample(self):
        """Each backend's final model sampled by every backend, one seed: the same text?"""
        out = {}
        for model_backend in self.backends:
            checkpoint = self.path(model_backend, f"model.{self.s['max_step']}.pt")
            for backend in self.backends:
                argv = self.command("generate.py", dict(
                    backend=backend, init_checkpoint=checkpoint, prompt=self.args.prompt,
                    max_new_tokens=self.s["sample_tokens"],
                    seed=self.args.random_seed, vocab=self.vocab_dir))
                text = self.sh(argv, f"sample_{model_backend}_model_by_{backend}.log",
                               capture=True)
                out[f"{model_backend} model, sampled by {backend}"] = text.strip()
        return out

    def stage_report(self):
        trained = self.state["stages"]["train"]["outputs"]
        samples = self.state["stages"]["sample"]["outputs"]
        logs = self.training_logs()
        metrics = {}
        for backend in self.backends:
            last = logs[backend].train[-1]
            metrics[backend] = {"valid_loss": trained[backend]["valid_loss"],
                                "valid_perplexity": trained[backend]["valid_ppl"],
                                "last_train_loss": last.loss, "steps": trained[backend]["steps"],
                                "train_seconds": round(trained[backend]["elapsed_s"], 1)}
        periodic = {b: self._samples(b) for b in self.backends}
        texts = list(samples.values())
        sections = ["## Samples\n\nThe final models sampled with scripts/generate.py (prompt "
                    f"{self.args.prompt!r}, temperature {self.s['temperature']}, top-k "
                    f"{self.s['top_k']}, seed {self.args.random_seed}); the seeded numpy sampler "
                    "is shared, so the same weights give the same text.\n"]
        for name, text in samples.items():
            sections[0] += f"\n- **{name}**: {text!r}"
        sections[0] += (f"\n\n{len(set(texts))} distinct text(s) among {len(texts)} samples.")
        rows = ["## Samples during training\n", "| step | " + " | ".join(self.backends) + " |",
                "|---|" + "---|" * len(self.backends)]
        steps = sorted({s for b in self.backends for s in periodic[b]})
        for step in steps:
            rows.append(f"| {step} | " + " | ".join(
                repr(periodic[b].get(step, "")).replace("|", "\\|") for b in self.backends) + " |")
        sections.append("\n".join(rows))
        agree = {"distinct_final_samples": len(set(texts)), "final_samples": len(texts),
                 "periodic_samples_identical": all(
                     len({periodic[b].get(s) for b in self.backends}) == 1 for s in steps)}
        return self.write_task_report("pretraining loss", metrics, sections,
                                      {"samples": samples, "periodic_samples": periodic,
                                       "sample_agreement": agree, "data": self.state["stages"]
                                       ["data"]["outputs"]})

    def _samples(self, backend):
        with open(self.path(backend, "samples.jsonl"), encoding="utf-8") as f:
            return {r["step"]: r["text"] for r in map(json.loads, f) if r}


class ClassifyPipeline(TaskPipeline):
    task = "classify"
    stages = STAGES["classify"]
    run_name = "classify-{preset}"

    def data_files(self):
        path = resolve_data_path(self.args.data, "SMS_SPAM_DATA",
                                 [os.path.join(REPO_ROOT, SMS_SPAM)], flag="--data",
                                 what="label<TAB>text file")
        return [os.path.abspath(path)]

    def stage_data(self):
        from shared.text.classify_data import LABELS, prepare_splits
        splits, weights = prepare_splits(self.data_files()[0], self.args.random_seed,
                                         self.s["balance"])
        out = {"file": self.data_files()[0], "class_weights": weights}
        for name, part in splits.items():  # the splits classify_ft.py draws, for classify.py
            write_text(self.path("data", f"{name}.tsv"),
                       "".join(f"{LABELS[label]}\t{text}\n" for label, text, _ in part))
            out[name] = {label: sum(e[0] == i for e in part) for i, label in enumerate(LABELS)}
        return out

    def stage_train(self):
        out = {}
        for backend in self.backends:
            lora = (dict(lora_alpha=2 * self.s["lora_dim"], lora_dropout=0.1)
                    if self.s["lora_dim"] else {})  # --lora_dim: the run's settings file
            argv = self.command("classify_ft.py", dict(
                self.common_train_flags(backend), data=self.data_files()[0], fixed_width=True,
                weight_decay=0.01, **lora, shared_dropout=self.args.exact_dropout))
            self.sh(argv, f"{backend}_train.log")
            with open(self.path(backend, "metrics.json")) as f:
                out[backend] = json.load(f)
        return out

    def stage_evaluate(self):
        """Each backend's model scored on the test split by every backend (classify.py)."""
        out = {}
        for model_backend in self.backends:
            for backend in self.backends:
                target = self.path(model_backend, f"test_metrics_by_{backend}.json")
                argv = self.command("classify.py", dict(
                    backend=backend, model_dir=self.path(model_backend),
                    eval_file=self.path("data", "test.tsv"), json=target, vocab=self.vocab_dir))
                self.sh(argv, f"evaluate_{model_backend}_by_{backend}.log")
                with open(target) as f:
                    out[f"{model_backend} model, scored by {backend}"] = json.load(f)
        return out

    def stage_report(self):
        trained = self.state["stages"]["train"]["outputs"]
        scored = self.state["stages"]["evaluate"]["outputs"]
        metrics = {}
        for backend in self.backends:
            test, valid = trained[backend]["test"], trained[backend]["valid"]
            metrics[backend] = {"test_accuracy": test["accuracy"], "test_precision":
                                test["precision"], "test_recall": test["recall"],
                                "test_f1": test["f1"], "valid_accuracy": valid["accuracy"],
                                "valid_f1": valid["f1"], "valid_loss": trained[backend]["valid_loss"],
                                "steps": trained[backend]["steps"]}
        lines = ["## Test split\n",
                 "Positive class: spam. Confusion matrix rows: true ham, spam; columns: "
                 "predicted ham, spam.\n",
                 "| model, scored by | accuracy | precision | recall | F1 | confusion |",
                 "|---|---|---|---|---|---|"]
        for name, m in scored.items():
            lines.append(f"| {name} | {m['accuracy']:.4f} | {m['precision']:.4f} | "
                         f"{m['recall']:.4f} | {m['f1']:.4f} | {m['confusion_matrix']} |")
        matrices = [json.dumps(m["confusion_matrix"]) for m in scored.values()]
        lines.append(f"\n{len(set(matrices))} distinct confusion matrix(es) among {len(matrices)} "
                     f"scorings.")
        data = self.state["stages"]["data"]["outputs"]
        lines.append("\nSplit sizes per class: " + "; ".join(
            f"{name} {data[name]}" for name in ("train", "valid", "test")) +
            f" (balance: {self.s['balance']}).")
        return self.write_task_report("classification loss", metrics, ["\n".join(lines)],
                                      {"test_scoring": scored, "data": data})


PIPELINES = {"pretrain": PretrainPipeline, "classify": ClassifyPipeline,
             "instruct": InstructPipeline,  # instruct: shared/pipeline/instruct_pipeline.py
             "peft": PeftPipeline,  # peft: shared/pipeline/peft_pipeline.py
             "dpo": PreferencePipeline,  # dpo, rlhf: shared/pipeline/preference_pipeline.py
             "rlhf": RLHFPipeline}
PARSERS = {"instruct": build_instruct_parser, "peft": build_peft_parser,
           "dpo": build_preference_parser, "rlhf": lambda: build_preference_parser("rlhf")}


TASKS = ("e2e", *PIPELINES)  # work.sh --task: e2e is scripts/run_pipeline.py's own pipeline


def main(task, argv):
    parser = PARSERS[task]() if task in PARSERS else build_parser(task)
    args = parser.parse_args(argv)
    if task == "peft":  # a usage error: one line, status 2, before any folder is made
        try:
            parse_methods(args.methods)
        except ValueError as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
    return run_to_end(lambda: PIPELINES[task](args))
