"""`bash work.sh --task dpo`: SFT -> reward model -> DPO on both backends, judged by the reward
model; `--task rlhf`: the same with PPO against the reward model (scripts/ppo_ft.py) in DPO's place.

Stages (the engine's stages.json: reruns skip finished stages, interrupted training resumes,
`--force_stage` redoes a stage and the later ones, `--until` stops after one):
  data    the preference JSON's entries (those whose chosen and rejected are equal left out) as
          an Alpaca file whose output is the chosen response (RUN/data/sft.json), split and
          encoded as instruction tuning does: the same seed gives the same split as reward_ft.py
          and dpo_ft.py draw, so the test prompts are held out of every stage
  init    --init_checkpoint converted, or a small base GPT-2 trained from scratch (torch) on the
          train split's prompts and chosen responses
  sft     scripts/instruct_ft.py per backend: LoRA on the train split's prompts + chosen
          responses (response tokens scored), merged into BACKEND/sft/sft.safetensors
  reward  scripts/reward_ft.py per backend from its SFT model: held-out pairwise accuracy
  dpo     scripts/dpo_ft.py per backend from its SFT model (the frozen reference), LoRA merged
          into BACKEND/dpo/policy.safetensors
  ppo     (rlhf) scripts/ppo_ft.py per backend from its SFT model (the frozen reference)
          against its reward model, LoRA merged into BACKEND/ppo/policy.safetensors
  judge   scripts/reward_judge.py per backend: the SFT model and every tuned policy answer the
          held-out prompts with the shared sampler and one seed; that backend's reward model
          scores them: the win rate of each tuned policy over SFT (ties half)
  report  report.md + report.json (atomic), a section per stage kind, torch - jittor beside
          every number, the DPO curves of both backends in dpo.png, example responses
Each backend runs the whole chain from the same base model and seeds, so the two chains differ
only where the frameworks do. The stage lists live in TASK_STAGES and the report's sections in
`section_<stage kind>` methods: another tuning stage (PPO) slots in as a list and a section.

SFT data: the preference file's own prompts with their chosen responses rather than
instruction-data.json, so that one split holds the test prompts out of SFT, the reward model and
DPO alike, and the SFT model learns the responses DPO then ranks (DPO's reference should be a
model of the preferred responses' distribution, as the DPO paper advises).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import time

from shared.model.checkpoint import load_for_model, save_checkpoint
from shared.model.classifier_params import TRAINABLE_PARTS
from shared.model.config import GPT2Config
from shared.model.hf_export import merged_base_state
from shared.pipeline.engine import PRESETS
from shared.pipeline.instruct_pipeline import InstructPipeline
from shared.pipeline.run_settings import stage_argv
from shared.runtime.arg_types import seed_int, setting_type
from shared.runtime.atomic import write_json, write_text
from shared.runtime.environment import devices, versions
from shared.runtime.paths import REPO_ROOT, file_check, resolve_data_path
from shared.train.train_args import BACKENDS, PRECISIONS

DEFAULT_DATA = os.path.join(REPO_ROOT, "..", "shared", "data", "instruct",
                            "instruction-data-with-preference.json")
PREFERENCE_ENV = "PREFERENCE_DATA"
TASK_STAGES = {"dpo": ("data", "init", "sft", "reward", "dpo", "judge", "report"),
               "rlhf": ("data", "init", "sft", "reward", "ppo", "judge", "report")}
TUNED_KINDS = ("dpo", "ppo")  # stages whose policy the judge sets against the SFT model
SETTING_TYPES = {"device": str, "model_card": str, "precision": str, "reward_trainable": str,
                 "base_lr": float, "sft_lr": float, "reward_lr": float, "dpo_lr": float,
                 "lora_dropout": float, "beta": float, "temperature": float, "ppo_lr": float,
                 "kl_coef": float, "target_kl": float, "vf_coef": float}
CHOICES = {"reward_trainable": TRAINABLE_PARTS, "device": ("cpu", "cuda"),
           "precision": PRECISIONS}
EXAMPLES_SHOWN = 3
LN2 = 0.6931471805599453


def build_parser(task="dpo"):
    stages = TASK_STAGES[task]
    p = argparse.ArgumentParser(
        prog=f"work.sh --task {task}", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Preference tuning on both backends from identical weights and seeds: "
                    f"stages {', '.join(stages)}; report in the run folder (or LOGS_DIR/<run>).")
    p.add_argument("--preset", choices=sorted(PRESETS[task]), default=None,
                   help="paper when a GPU is present, else cpu; micro is a smoke run")
    p.add_argument("--run", default=None, help=f"run name (default: {task}-<preset>)")
    p.add_argument("--runs_dir", default=os.path.join(REPO_ROOT, "runs"))
    p.add_argument("--logs_dir", default=None,
                   help="write the report and plots to LOGS_DIR/<run> (default: the run folder, "
                        "so a plain run never replaces the committed results under logs/)")
    p.add_argument("--data", default=None,
                   help=f"preference JSON (else ${PREFERENCE_ENV}, else ../shared/data/instruct/"
                        "instruction-data-with-preference.json)")
    p.add_argument("--vocab_dir", default=None, help="GPT-2 vocab (else GPT2_VOCAB_DIR)")
    p.add_argument("--backends", type=backend_list, default="torch,jittor",
                   help="comma-separated")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--force_stage", action="append", default=[], choices=stages,
                   help="rerun this stage and the ones after it")
    p.add_argument("--until", default=None, choices=stages, help="stop after this stage")
    p.add_argument("--init_checkpoint", default=None,
                   help="pretrained GPT-2 (HF or microsoft/LoRA layout): skips base training")
    p.add_argument("--exact_dropout", action="store_true",
                   help="LoRA dropout masks from one backend-neutral generator")
    p.add_argument("--random_seed", type=seed_int, default=10)
    p.add_argument("--split_seed", type=seed_int, default=123)
    for key in sorted({k for preset in PRESETS[task].values() for k in preset}):
        p.add_argument(f"--{key}", type=setting_type(key, SETTING_TYPES.get(key, int)),
                       default=None, choices=CHOICES.get(key), help="override the preset's value")
    return p


def backend_list(text):
    """--backends: torch and/or jittor, comma-separated (checked before any folder is made)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or set(names) - set(BACKENDS):
        raise argparse.ArgumentTypeError(f"must name torch and/or jittor, got {text!r}")
    return text


def resolve_data(flag):
    return os.path.abspath(resolve_data_path(flag, PREFERENCE_ENV, [DEFAULT_DATA], flag="--data",
                                             what="preference data", check=file_check))


def differences(a, b):
    """a - b for every number the two (nested) results share, in their shape."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = {k: differences(a[k], b[k]) for k in a if k in b}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return a - b
    return None


def read_records(path, kind="train") -> list:
    """[(step, record)] of a training log's records of `kind`."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [(r["step"], r) for r in records if r.get("kind") == kind]


class PreferencePipeline(InstructPipeline):
    """The engine's stages.json, resume and script runner, InstructPipeline's base model, with
    preference tuning's stages: one chain (sft, reward, tuned policies, judge) per backend."""
    task = "dpo"
    stages = TASK_STAGES["dpo"]
    run_name = "dpo-{preset}"
    gpu_preset = "paper"

    def find_data(self):
        """The preference file, its entries checked and split before the run folder is made:
        bad data (an entry without `chosen` or `rejected`, too few entries) is one line and
        nothing written."""
        from shared.text.preference_data import split_preference_entries
        self.data_file = resolve_data(self.args.data)
        split_preference_entries(self.data_file, self.args.split_seed,
                                 limit=self.s["limit"] or None, drop_equal=True)

    def stage_folders(self):
        folders = {"init": ["base"]}
        for kind in self.stages[self.stages.index("sft"):-1]:
            folders[kind] = [os.path.join(b, kind) for b in self.backends]
        return folders

    def run_values(self):
        return dict(random_seed=self.args.random_seed, backends=self.backends,
                    init_checkpoint=self.args.init_checkpoint,
                    exact_dropout=self.args.exact_dropout, split_seed=self.args.split_seed,
                    data=self.data_file)

    def tuned_stages(self):
        return [kind for kind in self.stages if kind in TUNED_KINDS]

    # ------------------------------------------------------------------------------ flags
    def data_flags(self):
        """The preference file as the preference scripts read it (equal pairs left out)."""
        return dict(data=self.data_file, split_seed=self.args.split_seed,
                    limit=self.s["limit"] or None, drop_equal_pairs=True, vocab=self.vocab_dir)

    def train_flags(self, backend, kind, init_checkpoint, **extra):
        """gpt2_ft.py's model, optimizer and run flags of stage `kind` (its settings
        KIND_steps, KIND_lr, KIND_batch_size) for `backend`, in BACKEND/KIND."""
        steps, work = self.s[f"{kind}_steps"], self.path(backend, kind)
        return dict(
            backend=backend, device=self.s["device"], **self.shape_flags(),
            init_checkpoint=init_checkpoint, **self.pick("lora_dim", "lora_alpha", "lora_dropout"),
            train_batch_size=self.s[f"{kind}_batch_size"], valid_batch_size=8,
            seq_len=self.s["seq_len"], lr=self.s[f"{kind}_lr"], weight_decay=0.01,
            correct_bias=True, clip=1.0, warmup_step=max(1, steps // 10), max_step=steps,
            scheduler="linear", log_interval=max(1, min(10, steps // 10)),
            eval_interval=max(1, steps // 2), save_interval=max(1, steps // 2),
            precision=self.s["precision"], random_seed=self.args.random_seed, work_dir=work,
            attn="math", no_progress=True, shared_dropout=self.args.exact_dropout,
            resume=self._has_checkpoint(work), **extra)

    def final_checkpoint(self, backend, kind):
        return self.path(backend, kind, f"model.{self.s[f'{kind}_steps']}.pt")

    def sft_model(self, backend):
        return self.path(backend, "sft", "sft.safetensors")

    def policy_model(self, backend, kind):
        return self.path(backend, kind, "policy.safetensors")

    def merge_final(self, backend, kind, out):
        """The stage's final checkpoint (all weights, LoRA apart) with LoRA folded in: a plain
        GPT-2 checkpoint the next stages load as --init_checkpoint."""
        config = GPT2Config(**dict(self.config.to_dict(), lora_attn_dim=self.s["lora_dim"],
                                   lora_attn_alpha=self.s["lora_alpha"]))
        state = load_for_model(self.final_checkpoint(backend, kind), config)
        save_checkpoint(out, merged_base_state(state, config))
        return out

    # ---------------------------------------------------------------------------- stages
    def stage_data(self):
        from shared.text.instruct_data import prepare_instruct
        from shared.text.preference_data import read_preference_entries, split_preference_entries
        from shared.text.tokenizer import load_tokenizer
        entries = read_preference_entries(self.data_file)[:self.s["limit"] or None]
        kept = [{"instruction": e["instruction"], "input": e["input"], "output": e["chosen"]}
                for e in entries if e["chosen"] != e["rejected"]]
        sft_file = self.path("data", "sft.json")
        write_json(sft_file, kept)
        tokenizer = load_tokenizer(self.vocab_dir)
        counts = {}
        for folder, response_only in (("full", False), ("response", True)):
            counts[folder] = prepare_instruct(sft_file, self.path("data", folder), tokenizer,
                                              self.args.split_seed, response_only=response_only)
        splits, dropped = split_preference_entries(self.data_file, self.args.split_seed,
                                                   limit=self.s["limit"] or None, drop_equal=True)
        with open(self.path("data", "full", "test_entries.json"), encoding="utf-8") as f:
            sft_test = [(e["instruction"], e["input"]) for e in json.load(f)]
        if sft_test != [(e["instruction"], e["input"]) for e in splits["test"]]:
            raise RuntimeError("the SFT split's test prompts are not the preference split's: "
                               "the held-out prompts would leak into a stage")
        return {"data": self.data_file, "sft_data": sft_file, "entries": counts["response"],
                "equal_pairs_left_out": dropped}

    def stage_sft(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            flags = self.train_flags(backend, "sft", self.path("base", "base.safetensors"),
                                     data=self.path("data", "sft.json"),
                                     split_seed=self.args.split_seed, vocab=self.vocab_dir,
                                     data_out=self.path("data", "response"), no_eval=True)
            self.sh(stage_argv("instruct_ft.py", flags), f"{backend}_sft.log")
            out[backend] = {"model": self.merge_final(backend, "sft", self.sft_model(backend)),
                            "seconds": time.time() - started}
        return out

    def stage_reward(self):
        out = {}
        trainable = self.s["reward_trainable"]
        for backend in self.backends:
            started = time.time()
            flags = self.train_flags(backend, "reward", self.sft_model(backend),
                                     **self.data_flags(), trainable=trainable)
            if trainable != "lora":
                flags.update(lora_dim=0, lora_alpha=None, lora_dropout=None)
            self.sh(stage_argv("reward_ft.py", flags), f"{backend}_reward.log")
            with open(self.path(backend, "reward", "reward_eval.json")) as f:
                out[backend] = dict(json.load(f), seconds=time.time() - started)
        return out

    def stage_dpo(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            flags = self.train_flags(backend, "dpo", self.sft_model(backend),
                                     **self.data_flags(), beta=self.s["beta"])
            self.sh(stage_argv("dpo_ft.py", flags), f"{backend}_dpo.log")
            with open(self.path(backend, "dpo", "dpo_eval.json")) as f:
                out[backend] = dict(json.load(f), seconds=time.time() - started)
            out[backend]["model"] = self.merge_final(backend, "dpo",
                                                     self.policy_model(backend, "dpo"))
        return out

    def stage_ppo(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            flags = self.train_flags(
                backend, "ppo", self.sft_model(backend), **self.data_flags(),
                reward_model=self.path(backend, "reward"),
                **self.pick("rollout_batch", "ppo_epochs", "kl_coef", "target_kl", "vf_coef",
                            "temperature", "top_k"),
                response_len=self.s["max_new_tokens"], eval_prompts=8)
            self.sh(stage_argv("ppo_ft.py", flags), f"{backend}_ppo.log")
            with open(self.path(backend, "ppo", "ppo_eval.json")) as f:
                out[backend] = dict(json.load(f), seconds=time.time() - started)
            out[backend]["model"] = self.merge_final(backend, "ppo",
                                                     self.policy_model(backend, "ppo"))
        return out

    def stage_judge(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            policies = [f"sft={self.sft_model(backend)}"] + [
                f"{kind}={self.policy_model(backend, kind)}" for kind in self.tuned_stages()]
            flags = self.data_flags()
            flags.pop("drop_equal_pairs")
            argv = stage_argv("reward_judge.py", dict(
                backend=backend, device=self.s["device"], **self.shape_flags(),
                policies=policies, reward_model=self.path(backend, "reward"), **flags,
                prompts=self.s["judge_prompts"] or None, seq_len=self.s["seq_len"],
                **self.pick("temperature", "top_k", "max_new_tokens"),
                seed=self.args.random_seed, out=self.path(backend, "judge", "judge.json")))
            self.sh(argv, f"{backend}_judge.log")
            with open(self.path(backend, "judge", "judge.json")) as f:
                out[backend] = dict(json.load(f), seconds=time.time() - started)
        return out

    # ---------------------------------------------------------------------------- report
    def stage_report(self):
        results = {
            "run": self.run, "task": self.task,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "devices": devices(self.s["device"]), "versions": versions(),
            "config": dict(self.s, random_seed=self.args.random_seed,
                           split_seed=self.args.split_seed, exact_dropout=self.args.exact_dropout,
                           data=self.data_file, init=self.state["stages"].get("init", {})
                           .get("outputs", {}).get("source")),
            "stages": [{"name": n, "seconds": round(v.get("seconds", 0.0), 1),
                        "status": v["status"]} for n, v in self.state["stages"].items()],
            "plots": {}}
        sections = []
        for kind in self.stages:
            section = getattr(self, f"section_{kind}", None)
            if section is not None and kind in self.state["stages"]:
                text, values = section(results["plots"])
                sections.append(text)
                results[kind] = values
        for backend in self.backends:  # the raw training logs beside the report
            for kind in ("sft", "reward", *self.tuned_stages()):
                shutil.copyfile(self.path(backend, kind, "train_log.jsonl"),
                                os.path.join(self.log_dir, f"{backend}_{kind}_train_log.jsonl"))
            shutil.copyfile(self.path(backend, "judge", "responses.jsonl"),
                            os.path.join(self.log_dir, f"{backend}_judge_responses.jsonl"))
        write_json(os.path.join(self.log_dir, "report.json"), results)
        write_text(os.path.join(self.log_dir, "report.md"), self.render(results, sections))
        print(f"report: {os.path.join(self.log_dir, 'report.md')}")
        return {"report": os.path.join(self.log_dir, "report.md")}

    def side_by_side(self, rows) -> str:
        """A table of (name, {backend: value}) rows with torch - jittor when both ran."""
        from shared.pipeline.report import markdown_table
        both = len(self.backends) == 2
        headers = ["", *self.backends] + ([" - ".join(self.backends)] if both else [])
        table = []
        for name, values in rows:
            row = [name, *(values.get(b) for b in self.backends)]
            if both:
                row.append(differences(values.get(self.backends[0]),
                                       values.get(self.backends[1])))
            table.append(row)
        return markdown_table(headers, table)

    def per_backend(self, stage):
        return self.state["stages"][stage]["outputs"]

    def with_difference(self, values: dict) -> dict:
        """{backend: values} plus "difference" (torch - jittor) when both backends ran."""
        if len(self.backends) == 2:
            values = dict(values, difference=differences(*(values[b] for b in self.backends)))
        return values

    def section_sft(self, plots):
        from shared.pipeline.plotting import plot_loss_comparison
        from shared.train.trainlog import loss_agreement, read_log
        logs = [read_log(self.path(b, "sft"), label=b) for b in self.backends] + [None]
        plot_loss_comparison(logs[0], logs[1], os.path.join(self.log_dir, "sft_loss.png"),
                             f"{self.run}: SFT loss (prompts + chosen responses)")
        plots["sft_loss"] = "sft_loss.png"
        values = {b: {"first_loss": log.train[0].loss, "last_loss": log.train[-1].loss,
                      "valid_loss": log.valid[-1].valid_loss if log.valid else None}
                  for b, log in zip(self.backends, logs)}
        values = self.with_difference(values)
        if len(self.backends) == 2:
            values["loss_agreement"] = loss_agreement(logs[0], logs[1])
        rows = [(name, {b: values[b][name] for b in self.backends})
                for name in ("first_loss", "last_loss", "valid_loss")]
        text = ("## SFT\n\n`scripts/instruct_ft.py`, LoRA, on the train split's prompts and "
                f"chosen responses ({self.s['sft_steps']} steps), from the base model; each "
                "backend's final weights, LoRA merged, start its reward model and DPO.\n\n"
                + self.side_by_side(rows) + "\n\n![SFT loss](sft_loss.png)")
        return text, values

    def section_reward(self, plots):
        evals = self.per_backend("reward")
        values = self.with_difference({b: {"test_" + k: v for k, v in evals[b]["test"].items()}
                                       for b in self.backends})
        names = ("test_pairs", "test_loss", "test_reward_accuracy", "test_reward_margin",
                 "test_reward_chosen", "test_reward_rejected")
        rows = [(n, {b: values[b].get(n) for b in self.backends}) for n in names]
        text = ("## Reward model\n\n`scripts/reward_ft.py` from each backend's SFT model "
                f"(trained: {self.s['reward_trainable']}, {self.s['reward_steps']} steps), loss "
                "-log sigmoid(r_chosen - r_rejected); pairwise accuracy on the held-out test "
                "split (the share of pairs whose chosen response gets the higher reward).\n\n"
                + self.side_by_side(rows))
        return text, values

    def section_dpo(self, plots):
        from shared.pipeline.plotting import plot_metric_panels
        records = {b: read_records(self.path(b, "dpo", "train_log.jsonl"))
                   for b in self.backends}
        metrics = ("loss", "rewards_margin", "rewards_accuracy")
        plot_metric_panels(records, metrics, os.path.join(self.log_dir, "dpo.png"),
                           f"{self.run}: DPO (beta {self.s['beta']}), training steps, "
                           + " vs ".join(self.backends))
        plots["dpo"] = "dpo.png"
        evals = self.per_backend("dpo")
        values = {}
        for b in self.backends:
            first = records[b][0][1]
            values[b] = {"first_step_loss": first["loss"],
                         "first_step_loss_minus_ln2": first["loss"] - LN2,
                         "last_step_loss": records[b][-1][1]["loss"],
                         **{"test_" + k: v for k, v in evals[b]["test"].items()}}
        values = self.with_difference(values)
        values["first_step_is_ln2"] = all(abs(values[b]["first_step_loss_minus_ln2"]) < 1e-5
                                          for b in self.backends)
        names = ("first_step_loss", "first_step_loss_minus_ln2", "last_step_loss", "test_pairs",
                 "test_loss", "test_rewards_accuracy", "test_rewards_margin",
                 "test_rewards_chosen", "test_rewards_rejected")
        rows = [(n, {b: values[b].get(n) for b in self.backends}) for n in names]
        check = "holds" if values["first_step_is_ln2"] else "FAILS"
        text = (f"## DPO\n\n`scripts/dpo_ft.py` from each backend's SFT model (the frozen "
                f"reference), LoRA, beta {self.s['beta']}, {self.s['dpo_steps']} steps. At the "
                f"first step the policy is the reference, so the loss must be ln 2 = "
                f"{LN2:.6f}: the check (within 1e-5) {check}. Implicit rewards are "
                "beta * log(pi / ref) of each response; accuracy is the share of pairs whose "
                "chosen response has the higher one, on the held-out test split.\n\n"
                + self.side_by_side(rows) + "\n\n![DPO curves](dpo.png)")
        return text, values

    def section_ppo(self, plots):
        from shared.pipeline.plotting import plot_metric_panels
        records = {b: read_records(self.path(b, "ppo", "train_log.jsonl"))
                   for b in self.backends}
        plot_metric_panels(records, ("reward", "kl", "kl_coef", "loss"),
                           os.path.join(self.log_dir, "ppo.png"),
                           f"{self.run}: PPO, training steps, " + " vs ".join(self.backends))
        plot_metric_panels(records, ("value_loss", "returns", "entropy", "clip_fraction"),
                           os.path.join(self.log_dir, "ppo_details.png"),
                           f"{self.run}: PPO's value loss, returns, entropy, clip fraction")
        plots.update(ppo="ppo.png", ppo_details="ppo_details.png")
        evals = self.per_backend("ppo")
        values = {}
        for b in self.backends:
            first, last = records[b][0][1], records[b][-1][1]
            values[b] = {"iterations": evals[b]["iterations"],
                         "first_reward": first["reward"], "last_reward": last["reward"],
                         "first_kl": first["kl"], "last_kl": last["kl"],
                         "last_kl_coef": last["kl_coef"], "last_loss": last["loss"],
                         "last_entropy": last["entropy"],
                         "mean_clip_fraction": sum(r["clip_fraction"] for _, r in records[b])
                         / len(records[b])}
        values = self.with_difference(values)
        if len(self.backends) == 2:  # step by step, the logged values of both chains
            a, b = (dict(records[k]) for k in self.backends)
            values["max_abs_difference_per_step"] = {
                name: max(abs(a[s][name] - b[s][name]) for s in a if s in b)
                for name in ("loss", "reward", "kl", "kl_coef", "value_loss", "entropy")}
        rows = [(n, {b: values[b][n] for b in self.backends}) for n in values[self.backends[0]]]
        s = self.s
        steps_per_iteration = s["rollout_batch"] // s["ppo_batch_size"] * s["ppo_epochs"]
        text = (f"## PPO\n\n`scripts/ppo_ft.py` from each backend's SFT model (the frozen "
                f"reference; a new LoRA and value head are trained), against that backend's "
                f"reward model: {s['ppo_steps']} steps = {s['ppo_steps'] // steps_per_iteration}"
                f" iterations of {s['rollout_batch']} sampled responses (up to "
                f"{s['max_new_tokens']} tokens, temperature {s['temperature']}, top-k "
                f"{s['top_k']}) and {s['ppo_epochs']} passes of minibatches of "
                f"{s['ppo_batch_size']}; KL coefficient {s['kl_coef']} adapted towards a KL of "
                f"{s['target_kl']} per response. `reward` is the rollout's mean score, `kl` its "
                "mean summed log(pi / ref) per response.\n\n" + self.side_by_side(rows)
                + "\n\n![PPO reward, KL, KL coefficient, loss](ppo.png)\n\n"
                "![PPO value loss, returns, entropy, clip fraction](ppo_details.png)")
        if len(self.backends) == 2:
            text += "\n\nLargest |torch - jittor| over the steps: " + ", ".join(
                f"{k} {v:.3g}" for k, v in values["max_abs_difference_per_step"].items()) + "."
        return text, values

    def section_judge(self, plots):
        judged = self.per_backend("judge")
        values, rows = {}, []
        for b in self.backends:
            values[b] = {"prompts": judged[b]["prompts"],
                         "sft_mean_reward": judged[b]["policies"]["sft"]["mean_reward"]}
            for kind in self.tuned_stages():
                rate = judged[b]["win_rates"][kind]
                values[b].update({f"{kind}_win_rate": rate["win_rate"],
                                  f"{kind}_wins": rate["wins"], f"{kind}_ties": rate["ties"],
                                  f"{kind}_losses": rate["losses"],
                                  f"{kind}_identical_responses": rate["identical_responses"],
                                  f"{kind}_mean_reward":
                                      judged[b]["policies"][kind]["mean_reward"]})
        values = self.with_difference(values)
        rows = [(n, {b: values[b][n] for b in self.backends}) for n in values[self.backends[0]]]
        responses = self.judged_responses()
        agreement = ""
        if len(self.backends) == 2:
            a, b = (responses[name] for name in self.backends)
            values["identical_across_backends"] = {
                policy: sum(x["responses"][policy] == y["responses"][policy]
                            for x, y in zip(a, b)) for policy in a[0]["responses"]}
            agreement = ("Responses identical in both backends: " + ", ".join(
                f"{policy} {count} of {len(a)}"
                for policy, count in values["identical_across_backends"].items()) + ".\n\n")
        sampling = judged[self.backends[0]]["sampling"]
        text = ("## Win rate over the SFT model\n\nThe SFT model and each tuned policy answer the "
                f"first {values[self.backends[0]]['prompts']} held-out test prompts "
                f"(`scripts/reward_judge.py`: the shared sampler, temperature "
                f"{sampling['temperature']}, top-k {sampling['top_k']}, up to "
                f"{sampling['max_new_tokens']} tokens, prompt i drawn with seed "
                f"{sampling['seed']} + i for every policy); the backend's own reward model "
                "scores each response. Win rate = (wins + ties / 2) / prompts; a response identical "
                "to the SFT model's is a tie.\n\n"
                + self.side_by_side(rows) + "\n\n" + agreement + self.examples_md(responses))
        return text, values

    def judged_responses(self) -> dict:
        """{backend: the judge's records, one per prompt}."""
        out = {}
        for b in self.backends:
            with open(self.path(b, "judge", "responses.jsonl"), encoding="utf-8") as f:
                out[b] = [json.loads(line) for line in f]
        return out

    def examples_md(self, responses) -> str:
        lines = ["### Example responses", ""]
        for index, row in enumerate(responses[self.backends[0]][:EXAMPLES_SHOWN]):
            prompt = row["instruction"] + (f" / input: {row['input']}" if row["input"] else "")
            lines += [f"**{index + 1}. {prompt}**", "", f"- chosen (data): {row['chosen']}"]
            for b in self.backends:
                other = responses[b][index]
                for name, text in other["responses"].items():
                    lines.append(f"- {b} {name} (reward {other['rewards'][name]:.4f}): "
                                 f"{text!r}")
            lines.append("")
        return "\n".join(lines)

    def render(self, results, sections) -> str:
        from shared.pipeline.report import _flatten, markdown_table
        total = sum(s["seconds"] for s in results["stages"])
        head = [f"# {self.run}: preference tuning ({' -> '.join(self.stages[2:-1])}), "
                + " vs ".join(self.backends), "",
                f"Preset {self.s['preset']}; the model: {self.config.n_layer} layers, "
                f"{self.config.n_embd} wide, {self.config.n_head} heads "
                f"({results['config']['init']}); data {self.data_file} "
                f"(split seed {self.args.split_seed}). "
                "torch - jittor is given beside every number.", ""]
        data = self.state["stages"]["data"]["outputs"]
        head.append(f"Entries per split: {data['entries']}; left out for equal chosen and "
                    f"rejected: {len(data['equal_pairs_left_out'])} "
                    f"({data['equal_pairs_left_out']}).")
        tail = ["## Stage timings", "",
                markdown_table(["stage", "seconds", "status"],
                               [(s["name"], s["seconds"], s["status"]) for s in results["stages"]]
                               + [("total", round(total, 1), "")]),
                "", "## Settings", "",
                markdown_table(["setting", "value"], _flatten(results["config"])),
                "", "## Devices", "", markdown_table(["name", "value"],
                                                     _flatten(results["devices"])),
                "", "## Versions", "", markdown_table(["name", "value"],
                                                      _flatten(results["versions"]))]
        return "\n".join(head) + "\n\n" + "\n\n".join(sections) + "\n\n" + "\n".join(tail) + "\n"


class RLHFPipeline(PreferencePipeline):
    """`bash work.sh --task rlhf`: dpo's chain with PPO against the reward model in DPO's place."""
    task = "rlhf"
    stages = TASK_STAGES["rlhf"]
    run_name = "rlhf-{preset}"
