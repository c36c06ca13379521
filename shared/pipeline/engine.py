"""The end-to-end alignment run behind `bash work.sh`: a resumable engine of stages and its presets.

Stages (each recorded in RUN_DIR/stages.json; a rerun skips finished stages unless --force):
  1 data     format + encode the E2E splits (E2E_DATA_DIR, --data_dir, or data/e2e)
  2 init     --init_checkpoint converted to the backend-neutral format, or a small base model
             trained from scratch on the training split (full fine-tuning), written once
  3 lora     LoRA fine-tuning with the torch backend and with the jittor backend from that base
  4 beam     beam search over the test split and decoding, for each backend
  5 check    both backends on the final weights: logits and gradients on validation batches,
             the per-layer trace against float64 (scripts/diff_layers.py) and, for queries whose
             beams differ, where the searches part (scripts/beam_divergence.py)
  6 metrics  the E2E metrics of each backend's predictions (METEOR etc. need Java) and their
             paired-bootstrap intervals, with the seed band when a second torch run exists
             (--seed_band: a torch run with random_seed + 1, trained and searched beside the two)
  7 report   report.md + report.json with metrics side by side, loss agreement, plots and the
             harness's sections (per-layer check, beam divergence, metric intervals)
Run artefacts (data, checkpoints, predictions) live in runs/<run>/, and so do the report and plots
unless --logs_dir names another place (the committed results under logs/ were made with
`--logs_dir logs`; a plain run never writes there). Every stage runs the project's own command-line scripts, so what is measured here
is exactly what a user runs; every setting comes from a preset (or its override).
"""
import datetime
import io
import json
import os
import shlex
import shutil
import sys
import time

from shared.runtime.arg_types import setting_type
from shared.runtime.atomic import write_json
from shared.model.checkpoint import load_for_model, save_checkpoint
from shared.runtime.differences import beam_agreement
from shared.model.config import GPT2Config
from shared.text.e2e_data import limit_test_split
from shared.runtime.environment import cuda_available, devices, versions
from shared.runtime.paths import REPO_ROOT, resolve_e2e_dir, resolve_vocab_dir
from shared.model.pretrained import checkpoint_config, write_config_beside
from shared.runtime.run_lock import RunLock
from shared.pipeline.run_settings import RUN_CONFIG, RunSettings, resumed, stage_argv
from shared.pipeline.run_settings import settings_from as preset_settings
from shared.pipeline.stage_process import run_stage
from shared.runtime.entry_point import run_script
from shared.runtime.preflight import check_outputs, output_dir_problems
from shared.train.data_parallel import launch_command, per_process_batch
from shared.train.train_args import BACKENDS

ROOT = REPO_ROOT  # where scripts/ is
STAGES = ("data", "init", "lora", "beam", "check", "metrics", "report")
SEED_BAND_RUN = "torch_seed2"  # torch again, random_seed + 1: what chance alone moves a score by

# The E2E settings its three presets share.
COMMON = dict(weight_decay=0.01, label_smooth=0.1, valid_batch_size=16, clip=0.0, base_clip=1.0,
              scheduler="linear", base_scheduler="cosine", log_interval=10, attn="math",
              length_penalty=0.8, no_repeat_ngram_size=4, repetition_penalty=1.0,
              eos_token_id=628, check_batch_size=4, check_batches=2, divergence_queries=20,
              bootstrap_resamples=1000)
# What --task peft takes of them (it has no check stage and no metric intervals).
PEFT_COMMON = {k: v for k, v in COMMON.items()
               if k not in ("check_batch_size", "check_batches", "divergence_queries",
                            "bootstrap_resamples")}
# work.sh --task dpo's presets: SFT -> reward model -> DPO (shared/pipeline/preference_pipeline.py).
# cpu: a tiny GPT-2 trained from scratch on the prompts and chosen responses, well under 20
# minutes on 2 cores; paper: GPT-2 medium as the source project tunes it (give
# --init_checkpoint).
DPO_PRESETS = {
    "cpu": dict(device="cpu", model_card="gpt2.sm", n_embd=64, n_layer=2, n_head=4,
                seq_len=256, precision="fp32", base_steps=200, base_lr=0.003,
                base_batch_size=8, lora_dim=8, lora_alpha=32, lora_dropout=0.1,
                sft_steps=60, sft_lr=0.003, sft_batch_size=8, reward_steps=60,
                reward_lr=0.003, reward_batch_size=4, reward_trainable="lora",
                dpo_steps=60, dpo_lr=0.003, dpo_batch_size=4, beta=0.1, limit=None,
                judge_prompts=40, max_new_tokens=32, temperature=0.7, top_k=40),
    "paper": dict(device="cuda", model_card="gpt2.md", n_embd=None, n_layer=None,
                  n_head=None, seq_len=512, precision="bf16", base_steps=1500,
                  base_lr=0.0005, base_batch_size=16, lora_dim=8, lora_alpha=32,
                  lora_dropout=0.1, sft_steps=600, sft_lr=0.0005, sft_batch_size=8,
                  reward_steps=600, reward_lr=0.0001, reward_batch_size=8,
                  reward_trainable="lora", dpo_steps=600, dpo_lr=0.00005,
                  dpo_batch_size=8, beta=0.1, limit=None, judge_prompts=None,
                  max_new_tokens=96, temperature=0.7, top_k=40),
    "micro": dict(device="cpu", model_card="gpt2.sm", n_embd=32, n_layer=2, n_head=2,
                  seq_len=256, precision="fp32", base_steps=4, base_lr=0.003,
                  base_batch_size=4, lora_dim=4, lora_alpha=16, lora_dropout=0.1,
                  sft_steps=4, sft_lr=0.003, sft_batch_size=4, reward_steps=4,
                  reward_lr=0.003, reward_batch_size=2, reward_trainable="lora",
                  dpo_steps=4, dpo_lr=0.003, dpo_batch_size=2, beta=0.1, limit=80,
                  judge_prompts=3, max_new_tokens=6, temperature=0.7, top_k=40),
}
# DPO's own settings, which --task rlhf's presets have PPO's in place of.
DPO_ONLY = ("dpo_steps", "dpo_lr", "dpo_batch_size", "beta")


def rlhf_preset(dpo: dict, ppo: dict, **changes) -> dict:
    """A preset of --task rlhf: `dpo` (its model, data, SFT, reward model and judge) with the PPO
    settings `ppo` where DPO's own were, and the values `changes` in place of dpo's."""
    out = {}
    for key, value in dpo.items():
        if key == DPO_ONLY[0]:
            out.update(ppo)
        if key not in DPO_ONLY:
            out[key] = changes.get(key, value)
    return out


# work.sh's presets, one table keyed by task (--task e2e: scripts/run_pipeline.py): per task a
# short CPU run on 2 cores, a GPU run that scales up, and a seconds-long smoke run. A preset holds
# every setting of a run (and so the report's hyper-parameter table).
PRESETS = {
    "e2e": {
        "cpu": dict(COMMON, device="cpu", model_card="gpt2.sm", n_embd=96, n_layer=3, n_head=4,
                    seq_len=96, precision="fp32", base_steps=700, base_lr=0.002, base_batch_size=8,
                    max_step=150, train_batch_size=8, lr=0.002, warmup_step=20, lora_dim=4,
                    lora_alpha=32, lora_dropout=0.1, beam=10, eval_len=48, beam_batch_size=63,
                    test_limit=None, eval_interval=50, save_interval=50, valid_batches=8),
        "cuda": dict(COMMON, device="cuda", model_card="gpt2.md", n_embd=None, n_layer=None,
                     n_head=None, seq_len=128, precision="bf16", base_steps=800, base_lr=0.0005,
                     base_batch_size=16, max_step=600, train_batch_size=8, lr=0.0002,
                     warmup_step=100, lora_dim=4, lora_alpha=32, lora_dropout=0.1, beam=10,
                     eval_len=64, beam_batch_size=126, test_limit=None, eval_interval=200,
                     save_interval=200, valid_batches=None),
        "micro": dict(COMMON, device="cpu", model_card="gpt2.sm", n_embd=32, n_layer=2, n_head=2,
                      seq_len=64, precision="fp32", base_steps=6, base_lr=0.003,
                      base_batch_size=4, max_step=6, train_batch_size=4, lr=0.003, warmup_step=2,
                      lora_dim=4, lora_alpha=16, lora_dropout=0.1, beam=2, eval_len=8,
                      beam_batch_size=8, test_limit=6, eval_interval=3, save_interval=3,
                      valid_batches=2),
    },
    # work.sh --task peft (shared/pipeline/peft_pipeline.py): every --peft method from one base,
    # each with its own settings {method: its gpt2_ft.py flags, lr among them}).
    "peft": {
        # Sixteen fine-tuning runs and searches on 2 CPU cores (34 minutes with the cores
        # shared by a dozen other processes, logs/peft-cpu): a 2-layer, 32-wide GPT-2 trained
        # from scratch (150 steps), 20 steps per method and backend, beam 3 over the first 20
        # test MRs. A check of the machinery and of the backends' agreement, not of the
        # methods' quality (the paper preset is that).
        "cpu": dict(PEFT_COMMON, device="cpu", model_card="gpt2.sm", n_embd=32, n_layer=2,
                    n_head=2, seq_len=64, precision="fp32", base_steps=150, base_lr=0.005,
                    base_batch_size=4, max_step=20, train_batch_size=4, warmup_step=2,
                    log_interval=2, beam=3, eval_len=24, beam_batch_size=20, test_limit=20,
                    eval_interval=10, save_interval=10, valid_batches=2, method_settings=dict(
                        lora=dict(lr=0.01, lora_dim=4, lora_alpha=32, lora_dropout=0.1),
                        full=dict(lr=0.001), top2=dict(lr=0.002), bitfit=dict(lr=0.01),
                        adapter=dict(lr=0.005, adapter_dim=8),
                        prompt=dict(lr=0.03, num_virtual_tokens=10, prompt_init="vocab"),
                        ptuning=dict(lr=0.005, num_virtual_tokens=10, ptuning_encoder="mlp"),
                        prefix=dict(lr=0.01, num_virtual_tokens=10, prefix_projection=0))),
        # The LoRA paper's GPT-2 M E2E run (its Table 11: AdamW, weight decay 0.01, batch 8,
        # warm-up 500, linear schedule, label smoothing 0.1, beam 10, length penalty 0.9,
        # no-repeat 4; LoRA r 4, alpha 32, dropout 0.1, lr 2e-4), 5 epochs of the offline
        # training split (3935 lines / 8 = 492 steps an epoch); pretrained GPT-2 M by
        # --init_checkpoint. The other methods' values are starting points (docs/tasks.md).
        "paper": dict(PEFT_COMMON, device="cuda", model_card="gpt2.md", n_embd=None, n_layer=None,
                      n_head=None, seq_len=512, precision="bf16", base_steps=800,
                      base_lr=0.0005, base_batch_size=16, max_step=2460, train_batch_size=8,
                      warmup_step=500, beam=10, eval_len=64, beam_batch_size=126,
                      test_limit=None, eval_interval=500, save_interval=500,
                      valid_batches=None, method_settings=dict(
                          lora=dict(lr=0.0002, lora_dim=4, lora_alpha=32, lora_dropout=0.1),
                          full=dict(lr=0.00005), top2=dict(lr=0.00005), bitfit=dict(lr=0.001),
                          adapter=dict(lr=0.0001, adapter_dim=8),
                          prompt=dict(lr=0.03, num_virtual_tokens=20, prompt_init="vocab"),
                          ptuning=dict(lr=0.001, num_virtual_tokens=20, ptuning_encoder="mlp"),
                          prefix=dict(lr=0.00005, num_virtual_tokens=10, prefix_projection=512)),
                      length_penalty=0.9),
        # Seconds: the tests' smoke run.
        "micro": dict(PEFT_COMMON, device="cpu", model_card="gpt2.sm", n_embd=32, n_layer=2, n_head=2,
                      seq_len=64, precision="fp32", base_steps=6, base_lr=0.003,
                      base_batch_size=4, max_step=6, train_batch_size=4, warmup_step=2, beam=2,
                      eval_len=8, beam_batch_size=8, test_limit=6, eval_interval=3,
                      save_interval=3, valid_batches=2, method_settings=dict(
                          lora=dict(lr=0.003, lora_dim=4, lora_alpha=16, lora_dropout=0.1),
                          full=dict(lr=0.003), top2=dict(lr=0.003), bitfit=dict(lr=0.003),
                          adapter=dict(lr=0.003, adapter_dim=4),
                          prompt=dict(lr=0.03, num_virtual_tokens=3, prompt_init="vocab"),
                          ptuning=dict(lr=0.003, num_virtual_tokens=3, ptuning_encoder="mlp"),
                          prefix=dict(lr=0.003, num_virtual_tokens=3, prefix_projection=0))),
    },
    "instruct": {
        "cpu": dict(device="cpu", model_card="gpt2.sm", n_embd=96, n_layer=3, n_head=4, seq_len=256,
                    precision="fp32", base_steps=400, base_lr=0.002, base_batch_size=8,
                    max_step=120, train_batch_size=8, lr=0.002, warmup_step=12, lora_dim=8,
                    lora_alpha=32, lora_dropout=0.1, max_new_tokens=48, limit=None,
                    eval_limit=40, eval_interval=60, save_interval=60),
        "cuda": dict(device="cuda", model_card="gpt2.sm", n_embd=None, n_layer=None, n_head=None,
                     seq_len=512, precision="bf16", base_steps=1500, base_lr=0.0005,
                     base_batch_size=16, max_step=600, train_batch_size=8, lr=0.0005,
                     warmup_step=50, lora_dim=8, lora_alpha=32, lora_dropout=0.1,
                     max_new_tokens=96, limit=None, eval_limit=None, eval_interval=200,
                     save_interval=200),
        "micro": dict(device="cpu", model_card="gpt2.sm", n_embd=32, n_layer=2, n_head=2,
                      seq_len=256, precision="fp32", base_steps=4, base_lr=0.003,
                      base_batch_size=4, max_step=4, train_batch_size=4, lr=0.003, warmup_step=1,
                      lora_dim=4, lora_alpha=16, lora_dropout=0.1, max_new_tokens=6, limit=60,
                      eval_limit=3, eval_interval=2, save_interval=2),
    },
    "dpo": DPO_PRESETS,
    # SFT -> reward model -> PPO (shared/pipeline/preference_pipeline.py): dpo's presets (the
    # same model and stages before PPO) with PPO's settings in DPO's place, lora_dropout 0 and,
    # on the CPU, shorter responses. A PPO iteration answers rollout_batch prompts
    # (max_new_tokens each), then ppo_epochs passes of ppo_batch_size minibatches: cpu 12
    # iterations of 4 steps.
    "rlhf": {
        "cpu": rlhf_preset(DPO_PRESETS["cpu"], dict(
            ppo_steps=48, ppo_lr=0.003, ppo_batch_size=4, rollout_batch=8, ppo_epochs=2,
            kl_coef=0.05, target_kl=6.0, vf_coef=0.1), lora_dropout=0.0, max_new_tokens=24),
        "paper": rlhf_preset(DPO_PRESETS["paper"], dict(
            ppo_steps=800, ppo_lr=0.00005, ppo_batch_size=8, rollout_batch=32, ppo_epochs=4,
            kl_coef=0.2, target_kl=6.0, vf_coef=0.1), lora_dropout=0.0),
        "micro": rlhf_preset(DPO_PRESETS["micro"], dict(
            ppo_steps=4, ppo_lr=0.003, ppo_batch_size=2, rollout_batch=4, ppo_epochs=1,
            kl_coef=0.1, target_kl=6.0, vf_coef=0.1), lora_dropout=0.0),
    },
    "pretrain": {
        # A few minutes on 2 idle CPU cores: a tiny GPT-2 trained from scratch on the-verdict.
        "cpu": dict(device="cpu", n_embd=48, n_layer=2, n_head=4, seq_len=48, stride=48,
                    batch_size=8, max_step=80, lr=0.003, warmup_step=8, eval_interval=20,
                    sample_every=20, valid_fraction=0.1, temperature=0.8, top_k=20,
                    sample_tokens=40, precision="fp32"),
        "cuda": dict(device="cuda", n_embd=768, n_layer=12, n_head=12, seq_len=256, stride=128,
                     batch_size=8, max_step=400, lr=0.0004, warmup_step=40, eval_interval=50,
                     sample_every=100, valid_fraction=0.1, temperature=0.8, top_k=20,
                     sample_tokens=40, precision="bf16"),
        "micro": dict(device="cpu", n_embd=32, n_layer=2, n_head=2, seq_len=32, stride=32,
                      batch_size=4, max_step=6, lr=0.003, warmup_step=2, eval_interval=3,
                      sample_every=3, valid_fraction=0.1, temperature=0.8, top_k=20,
                      sample_tokens=8, precision="fp32"),
    },
    "classify": {
        # A few minutes on 2 idle CPU cores: no pretrained GPT-2 here, so a tiny one from
        # scratch (--init_checkpoint gives it pretrained weights, e.g. the pretrain run's).
        "cpu": dict(device="cpu", n_embd=64, n_layer=2, n_head=4, max_len=64, batch_size=16,
                    max_step=260, lr=0.001, warmup_step=20, eval_interval=50,
                    trainable="all", lora_dim=0, balance="undersample", precision="fp32"),
        "cuda": dict(device="cuda", n_embd=768, n_layer=12, n_head=12, max_len=128,
                     batch_size=16, max_step=600, lr=0.0001, warmup_step=50, eval_interval=100,
                     trainable="all", lora_dim=0, balance="undersample", precision="bf16"),
        "micro": dict(device="cpu", n_embd=32, n_layer=2, n_head=2, max_len=32, batch_size=8,
                      max_step=6, lr=0.003, warmup_step=2, eval_interval=3, trainable="all",
                      lora_dim=0, balance="undersample", precision="fp32"),
    },
}


def setting_types(task="e2e") -> dict:
    """{setting: the type its command-line override parses to}, from the task's preset values
    (int where every preset leaves it None), range-checked (shared/runtime/arg_types.py)."""
    types = {}
    for preset in PRESETS[task].values():
        for key, value in preset.items():
            if isinstance(value, dict):  # a table (peft's per-method flags), not one flag
                continue
            if value is not None or key not in types:
                types[key] = type(value) if value is not None else types.get(key, int)
    return {key: setting_type(key, kind) for key, kind in sorted(types.items())}


def settings_from(args, task="e2e", gpu_preset="cuda") -> RunSettings:
    """The task's preset `args.preset` names (default: `gpu_preset` when a GPU is present, else
    cpu) with the values given on the command line in place of its own
    (shared/pipeline/run_settings.py)."""
    return preset_settings(args, PRESETS[task], task, gpu_preset if cuda_available() else "cpu")


def report_dir(args, run):
    """Where the report of `run` goes: LOGS_DIR/<run> when given, else the run folder (so a
    plain run never replaces the committed results under logs/, made with `--logs_dir logs`)."""
    return os.path.join(args.logs_dir or args.runs_dir, run)


class Pipeline:
    """A run of work.sh: its settings (PRESETS[task] + flags: a RunSettings, written as
    RUN_DIR/run_config.json), folders, stages and their state. Task pipelines
    (task_pipelines.py, instruct_pipeline.py, peft_pipeline.py, preference_pipeline.py) subclass
    it and override the hooks __init__ calls (find_data, stage_folders, run_values, configure)
    and the stages; every stage runs through `sh` and every report through `publish_report`."""
    task = "e2e"  # the key of its presets in PRESETS
    stages = STAGES  # the order stage() and run_all() follow (task pipelines have their own)
    run_name = "{preset}-default"  # the run folder's name unless --run names it
    gpu_preset = "cuda"  # the preset of a run without --preset on a machine with a GPU

    def __init__(self, args):
        self.open_run(args, settings_from(args, self.task, self.gpu_preset), self.run_name)
        self.find_data()
        self.make_run_folder(self.stage_folders())
        self.configure()

    def find_data(self):
        """The E2E .txt folder, checked before any folder is made (and the seed band's run)."""
        self.data_dir = resolve_e2e_dir(self.args.data_dir)
        self.seed_band = bool(getattr(self.args, "seed_band", False)) and "torch" in self.backends

    def stage_folders(self):
        """{stage: the run's folders it writes}: --force_stage starts them over."""
        return {"init": ["base"], "lora": list(self.backends) + self.seed_runs()}

    def run_values(self):
        """The run-wide values of RunSettings.run (besides the preset's): what else changes the
        results of this task's run. Not the E2E folder: the same data may sit elsewhere on the
        machine that finishes a run (--until on one machine, the rest on another). --nproc is
        one: N processes give one process's losses to ~1e-6, not bit for bit."""
        return dict(random_seed=self.args.random_seed, backends=self.backends,
                    init_checkpoint=self.args.init_checkpoint,
                    exact_dropout=self.args.exact_dropout, seed_band=self.seed_band,
                    nproc=self.args.nproc)

    def configure(self):
        """What the stages need once the run folder is there: the model's config, and the
        per-process batches of --nproc N (the preset's batches are the global ones)."""
        self.config = self.model_config()
        self.nproc = getattr(self.args, "nproc", 1)
        self.batch = {key: per_process_batch(self.s[key], self.nproc, f"--{key}")
                      for key in ("base_batch_size", "train_batch_size") if key in self.s}

    # ------------------------------------------------------------- setup (every pipeline's)
    def open_run(self, args, settings, default_run):
        """The arguments, settings, run name (`default_run` with {preset} filled in, unless
        --run names it), run and report folders and backends that every pipeline has."""
        self.args, self.settings = args, settings
        self.s = dict(settings.settings, preset=settings.preset)  # what the report lists
        self.run = args.run or default_run.format(preset=settings.preset)
        self.run_dir = os.path.join(args.runs_dir, self.run)
        self.log_dir = report_dir(args, self.run)
        check_outputs(output_dir_problems("--runs_dir", args.runs_dir)  # before any stage
                      + (output_dir_problems("--logs_dir", args.logs_dir) if args.logs_dir else []))
        self.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if not self.backends or set(self.backends) - set(BACKENDS):
            raise ValueError(f"--backends must name torch and/or jittor, got {args.backends!r}")

    def make_run_folder(self, stage_folders):
        """After the pipeline found its data: the vocabulary, the run's settings (those stored by
        an earlier run of the folder, which its flags must not contradict, unless --force), the
        run and report folders and the state of the stages (stages.json; `stage_folders`: the
        folders each stage writes)."""
        self.vocab_dir = resolve_vocab_dir(self.args.vocab_dir)
        now = RunSettings(self.settings.task, self.settings.preset, self.settings.settings,
                          self.run_values())
        stored = RunSettings.read(self.run_dir)
        if stored is not None and not self.args.force:
            now = resumed(stored, self.args, PRESETS[self.task], now)
        self.settings, self.s = now, dict(now.settings, preset=now.preset)
        os.makedirs(self.run_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self.state_path = os.path.join(self.run_dir, "stages.json")
        self.stage_folders = stage_folders
        self.state = self._load_state()

    def model_config(self) -> GPT2Config:
        """The model the settings describe; an --init_checkpoint whose folder has a config
        (pretrained.py) gives the shape, and shape settings must agree with it."""
        shape = dict(n_embd=self.s["n_embd"], n_layer=self.s["n_layer"], n_head=self.s["n_head"])
        lora = dict(lora_attn_dim=self.s["lora_dim"], lora_attn_alpha=self.s["lora_alpha"])
        found = checkpoint_config(self.args.init_checkpoint)
        if found is not None:
            return found.model_config(**shape, **lora)
        return GPT2Config.from_model_card(self.s["model_card"], **shape, **lora)

    def save_base(self, base, base_config):
        """--init_checkpoint converted to `base` (backend-neutral), with a config.json beside it
        when the checkpoint had a config, so the later stages read the same model."""
        save_checkpoint(base, load_for_model(self.args.init_checkpoint, base_config))
        if checkpoint_config(self.args.init_checkpoint) is not None:
            write_config_beside(os.path.dirname(base), base_config)
        return {"base": base, "source": self.args.init_checkpoint}

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
        return self.settings.to_json()

    def seed_runs(self):
        """The folders of the extra torch run that gives the seed band (none without --seed_band)."""
        return [SEED_BAND_RUN] if self.seed_band else []

    def path(self, *parts):
        return os.path.join(self.run_dir, *parts)

    def command(self, script, flags, positional=()):
        """The command of a stage: scripts/`script` started from the run's settings file
        (RUN_DIR/run_config.json, which gives it every setting named like one of its flags)
        with `flags`, the stage's own (run_settings.stage_argv)."""
        return stage_argv(script, flags, positional, config=self.path(RUN_CONFIG))

    def sh(self, argv, log_name, launcher=None, capture=False):
        """Run a project script (`command`'s list), streaming its output and keeping a copy in
        RUN_DIR/logs; a stop signal is passed on to it and ends the run once it has stopped
        (shared/pipeline/stage_process.py). The one stage runner: `capture` returns the script's
        stdout (kept in the log, not shown), its stderr going to the log only. `launcher`: what
        runs it (default: this Python; data_parallel.launch_command)."""
        cmd = [*(launcher or [sys.executable]), *argv]
        os.makedirs(self.path("logs"), exist_ok=True)
        log_path = self.path("logs", log_name)
        # the command that reruns the stage by hand, from the repository's root
        shown = shlex.join(argv if cmd[:-len(argv)] == [sys.executable] else cmd)
        print("$ " + shown, flush=True)
        stdout = io.StringIO() if capture else None
        with open(log_path, "a") as log:
            log.write(f"$ {shown}\n")
            log.flush()
            code = run_stage(cmd, cwd=ROOT, env=self.stage_env(), log=log, out=stdout,
                             stderr=log if capture else None)
        if code != 0:
            raise RuntimeError(f"`{shown}` failed with exit code {code} (log: {log_path})")
        return stdout.getvalue() if capture else None

    def stage_env(self):
        """The environment of a stage's script: ours, unbuffered, with the run's vocabulary."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.vocab_dir:
            env["GPT2_VOCAB_DIR"] = self.vocab_dir
        return env

    def stage(self, name, func):
        stages = self.stages
        forced = self.args.force or any(stages.index(name) >= stages.index(f)
                                        for f in self.args.force_stage)
        done = self.state["stages"].get(name)
        print(f"\n=== stage {stages.index(name) + 1}/{len(stages)}: {name} ===", flush=True)
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
        for later in stages[stages.index(name) + 1:]:  # results after this one are stale now
            if forced:
                self.state["stages"].pop(later, None)
        write_json(self.state_path, self.state)
        print(f"--- {name}: {time.time() - started:.1f}s", flush=True)
        return outputs

    def plot_base_loss(self, plots):
        """LOG_DIR/base_loss.png, the loss of the base model the init stage trained from scratch
        (none when it started from --init_checkpoint), added to `plots`."""
        from shared.pipeline.plotting import plot_loss_comparison
        from shared.train.trainlog import read_log
        base_log = self.path("base", "train_log.jsonl")
        if os.path.isfile(base_log):
            plot_loss_comparison(read_log(base_log, label="base (torch)"), None,
                                 os.path.join(self.log_dir, "base_loss.png"),
                                 f"{self.run}: base model trained from scratch")
            plots["base_loss"] = "base_loss.png"

    # ---------------------------------------------------------------------------- stages
    def stage_data(self):
        from shared.text.e2e_data import prepare_e2e
        written = prepare_e2e(self.data_dir, self.path("data"), vocab_dir=self.vocab_dir)
        if self.s["test_limit"]:
            limit_test_split(self.path("data"), self.s["test_limit"])
        return {"data_dir": self.data_dir, "written": written}

    def stage_init(self):
        base = self.path("base", "base.safetensors")
        base_config = GPT2Config(**dict(self.config.to_dict(), lora_attn_dim=0))
        if self.args.init_checkpoint:
            return self.save_base(base, base_config)
        work, steps = self.path("base"), self.s["base_steps"]
        # full fine-tuning with the base_* settings, no label smoothing and the fused attention
        # (the script's defaults) in place of the LoRA run's settings of those names
        argv = self.command("gpt2_ft.py", dict(
            backend="torch", train_data=self.path("data", "train.jsonl"),
            valid_data=self.path("data", "valid.jsonl"), lora_dim=0, label_smooth=0.0,
            attn="sdpa", train_batch_size=self.batch["base_batch_size"], lr=self.s["base_lr"],
            correct_bias=True, clip=self.s["base_clip"], warmup_step=max(1, steps // 20),
            max_step=steps, scheduler=self.s["base_scheduler"], log_interval=max(1, steps // 10),
            eval_interval=steps, save_interval=max(1, steps // 4),
            random_seed=self.args.random_seed, work_dir=work,
            max_eval_batches=self.s["valid_batches"] or None, resume=self._has_checkpoint(work)))
        self.sh(argv, "base_train.log", launch_command("torch", self.nproc))
        state = load_for_model(self.path("base", f"model.{self.s['base_steps']}.pt"), base_config)
        save_checkpoint(base, state)
        return {"base": base, "source": "trained from scratch (torch, full fine-tuning)"}

    @staticmethod
    def _has_checkpoint(work_dir):
        return os.path.isdir(work_dir) and any(
            n.startswith("trainer_state.") for n in os.listdir(work_dir))

    def lora_argv(self, backend, folder=None, seed=None):
        """gpt2_ft.py's command for `backend`, in RUN_DIR/`folder` (default: the backend's name)
        with `seed` (default: --random_seed)."""
        folder = folder or backend
        seed = self.args.random_seed if seed is None else seed
        return self.command("gpt2_ft.py", dict(
            backend=backend, train_data=self.path("data", "train.jsonl"),
            valid_data=self.path("data", "valid.jsonl"),
            init_checkpoint=self.path("base", "base.safetensors"),
            train_batch_size=self.batch["train_batch_size"], correct_bias=True,
            random_seed=seed, work_dir=self.path(folder),
            max_eval_batches=self.s["valid_batches"] or None,
            shared_dropout=self.args.exact_dropout, resume=self._has_checkpoint(self.path(folder))))

    def runs(self):
        """(folder, backend, seed) of every fine-tuning run: one per backend, plus the seed-band run."""
        out = [(b, b, self.args.random_seed) for b in self.backends]
        return out + [(f, "torch", self.args.random_seed + 1) for f in self.seed_runs()]

    def stage_lora(self):
        out = {}
        for folder, backend, seed in self.runs():
            started = time.time()
            self.sh(self.lora_argv(backend, folder, seed), f"{folder}_train.log",
                    launch_command(backend, self.nproc))
            out[folder] = {"checkpoint": self.path(folder, f"model.{self.s['max_step']}.pt"),
                           "seconds": time.time() - started}
        return out

    def search_flags(self):
        """The beam search's own flags beside the settings, as gpt2_beam.py and
        beam_divergence.py take them: the test split, and room for the context and eval_len."""
        return dict(data=self.path("data", "test.jsonl"),
                    seq_len=self.s["seq_len"] + self.s["eval_len"])

    def stage_beam(self):
        out = {}
        for folder, backend, _ in self.runs():
            started = time.time()
            work = self.path(folder)
            argv = self.command("gpt2_beam.py", dict(
                backend=backend, init_checkpoint=os.path.join(work, f"model.{self.s['max_step']}.pt"),
                **self.search_flags(), batch_size=self.s["beam_batch_size"], work_dir=work,
                output_file="predict.jsonl", unique_contexts=True))
            self.sh(argv, f"{folder}_beam.log")
            beam_seconds = time.time() - started
            self.sh(self.command("gpt2_decode.py", dict(
                vocab=self.vocab_dir, sample_file=os.path.join(work, "predict.jsonl"),
                input_file=self.path("data", "test_formatted.jsonl"),
                output_ref_file=os.path.join(work, "e2e_ref.txt"),
                output_pred_file=os.path.join(work, "e2e_pred.txt"))), f"{folder}_decode.log")
            out[folder] = {"beam_seconds": beam_seconds, "seconds": time.time() - started}
        return out

    def stage_metrics(self):
        out = {}
        for backend in self.backends:
            started = time.time()
            work = self.path(backend)
            score_argv = self.command(
                "measure_scores.py", dict(python=True, json=os.path.join(work, "metrics.json"),
                                          no_meteor=self.args.no_meteor),
                positional=[os.path.join(work, "e2e_ref.txt"), os.path.join(work, "e2e_pred.txt")])
            self.sh(score_argv, f"{backend}_scores.log")
            with open(os.path.join(work, "metrics.json")) as f:
                out[backend] = json.load(f)
            out[backend]["seconds"] = time.time() - started
        if len(self.backends) == 2:
            out["intervals"] = self.metric_intervals()
        return out

    def metric_intervals(self):
        """Paired-bootstrap intervals of torch - jittor per metric, and the seed band (torch -
        torch of another seed) when the seed-band run exists; never without it."""
        pred = lambda folder: os.path.join(self.path(folder), "e2e_pred.txt")  # noqa: E731
        argv = self.command("metric_intervals.py", dict(
            references=os.path.join(self.path("torch"), "e2e_ref.txt"), torch=pred("torch"),
            jittor=pred("jittor"), resamples=self.s["bootstrap_resamples"],
            out=self.path("metric_intervals"),
            torch_seed2=pred(self.seed_runs()[0]) if self.seed_runs() else None))
        self.sh(argv, "metric_intervals.log")
        return {"json": self.path("metric_intervals", "metric_intervals.json")}

    def stage_check(self):
        backend = self.backends[0]
        same = dict(  # the checkpoints, data, shape and batches of the check and the trace
            init_checkpoint=self.path("base", "base.safetensors"),
            lora_checkpoint=self.path(backend, f"model.{self.s['max_step']}.pt"),
            data=self.path("data", "valid.jsonl"), batch_size=self.s["check_batch_size"],
            batches=self.s["check_batches"])
        if len(self.backends) < 2:
            return {"skipped": "needs both backends"}
        self.sh(self.command("check_alignment.py", dict(same, json=self.path("final_check.json"))),
                "final_check.log")
        self.sh(self.command("diff_layers.py", dict(
            same, out=self.path("diff_layers"), exit_zero=True)), "diff_layers.log")
        final = f"model.{self.s['max_step']}.pt"
        self.sh(self.command("beam_divergence.py", dict(
            **self.search_flags(), torch_checkpoint=self.path("torch", final),
            jittor_checkpoint=self.path("jittor", final),
            torch_predictions=self.path("torch", "predict.jsonl"),
            jittor_predictions=self.path("jittor", "predict.jsonl"),
            max_queries=self.s["divergence_queries"], out=self.path("beam_divergence"))),
            "beam_divergence.log")
        return {"json": self.path("final_check.json"),
                "per_layer": self.path("diff_layers", "diff_layers.json"),
                "beam_divergence": self.path("beam_divergence", "beam_divergence.json")}

    def stage_report(self):
        from shared.pipeline.plotting import plot_loss_comparison, plot_lr_schedule
        from shared.train.trainlog import loss_agreement, loss_table, read_log
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
        self.plot_base_loss(plots)
        metrics = {}
        for backend in self.backends:
            with open(self.path(backend, "metrics.json")) as f:
                metrics[backend] = json.load(f)
        results = {
            "run": self.run, "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "devices": devices(self.s["device"]), "versions": versions(),
            "config": dict(self.s, exact_dropout=self.args.exact_dropout,
                           random_seed=self.args.random_seed, seed_band=self.seed_band,
                           init=self.state["stages"].get("init", {}).get("outputs", {}).get("source")),
            "stages": [{"name": n, "seconds": round(v.get("seconds", 0.0), 1), "status": v["status"]}
                       for n, v in self.state["stages"].items()],
            "metrics": metrics, "plots": plots,
        }
        if len(self.backends) == 2:
            a, b = (logs[n] for n in self.backends)
            results["loss_agreement"] = loss_agreement(a, b)
            results["loss_table"] = loss_table(a, b)
            results["beam_agreement"] = beam_agreement(
                [self.path(backend, "predict.jsonl") for backend in self.backends])
            if os.path.isfile(self.path("final_check.json")):
                with open(self.path("final_check.json")) as f:
                    results["final_check"] = json.load(f)
            results.update(self.harness_results())
        for backend in self.backends:  # keep the raw training logs next to the report
            shutil.copyfile(self.path(backend, "train_log.jsonl"),
                            os.path.join(self.log_dir, f"{backend}_train_log.jsonl"))
            shutil.copyfile(self.path(backend, "e2e_pred.txt"),
                            os.path.join(self.log_dir, f"{backend}_e2e_pred.txt"))
        return self.publish_report(results)

    def harness_results(self):
        """What the check and metrics stages' harness scripts (alignment/) wrote: their results
        for report.json (the per-layer check without its per-tensor records, which stay in
        diff_layers.json) and their report sections, rendered by alignment/ beside the JSON
        (shared/ imports no alignment module)."""
        out, sections = {}, []
        for key, folder in (("per_layer", "diff_layers"), ("beam_divergence", "beam_divergence"),
                            ("metric_intervals", "metric_intervals")):
            path = self.path(folder, f"{folder}.json")
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                document = json.load(f)
            out[key] = {k: v for k, v in document.items() if k not in ("records", "per_module")}
            with open(self.path(folder, "report_section.md")) as f:
                sections.append(f.read())
        if sections:
            out["harness_sections"] = sections
        return out

    def report_results(self, **config) -> dict:
        """The head of every task's report.json: the run, task, time, devices and versions, the
        settings with the run-wide values `config`, and the stages' timings and status."""
        return {
            "run": self.run, "task": self.task,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "devices": devices(self.s["device"]), "versions": versions(),
            "config": dict(self.s, **config),
            "stages": [{"name": n, "seconds": round(v.get("seconds", 0.0), 1),
                        "status": v["status"]} for n, v in self.state["stages"].items()]}

    def publish_report(self, results, markdown=None) -> dict:
        """report.json and report.md (`markdown`, else rendered from `results`) written atomically
        in the report folder: the report stage's output."""
        from shared.pipeline.report import write_report
        _, md_path = write_report(self.log_dir, results, markdown)
        print(f"report: {md_path}")
        return {"report": md_path}

    def run_all(self):
        started = time.time()
        print(f"work.sh: run {self.run!r} ({self.s['preset']} preset) -> {self.run_dir}, "
              f"report in {self.log_dir}")
        if (os.path.isfile(os.path.join(self.log_dir, "report.md"))
                and "report" not in self.state["stages"]):  # not this run folder's own report
            print(f"work.sh: replacing the report already in {self.log_dir} when this run ends")
        print("settings: " + ", ".join(f"{k}={v}" for k, v in self.s.items()))
        self.settings.write(self.run_dir)  # under the run's lock: run_config.json
        for name in self.stages:
            self.stage(name, getattr(self, f"stage_{name}"))
            if name == self.args.until:
                print(f"\nstopped after stage {name} (--until) in {time.time() - started:.1f}s")
                return
        print(f"\nall stages done in {time.time() - started:.1f}s")


def run_to_end(make_pipeline) -> int:
    """Build a pipeline and run its stages under its run folder's lock (one run per folder); a
    stop signal ends it after the running stage has saved. The exit status of work.sh: 1 and
    one line when it stops on an error (shared/runtime/entry_point.py's run_script)."""
    def work():
        pipeline = make_pipeline()
        with RunLock(pipeline.run_dir):
            pipeline.run_all()

    def stopped(exc):
        return (f"\nwork.sh: {exc}. Finished stages and saved checkpoints are kept: run the same "
                f"command again to resume.")
    # between stages; sh() passes the signals on to a running stage
    return run_script(work, errors=(RuntimeError,), on_stop=stopped, prefix="\nwork.sh: stopped: ",
                      failure_status=1)
