"""One settings object per run (shared/pipeline/run_settings.py) and `--config FILE` on the stage
scripts (shared/runtime/config_parser.py): a setting's way from the preset to the model, the
run's run_config.json read back by a rerun, and the config file's values, precedence and errors."""
import dataclasses
import io
import json
import sys

import pytest

from shared.pipeline.engine import PRESETS, Pipeline
from shared.pipeline.run_settings import RUN_CONFIG, RunSettings, stage_argv
from shared.pipeline.stage_process import run_stage
from shared.runtime.config_parser import RUN_SETTINGS_KEYS
from shared.train.train_args import build_parser, model_config

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/scripts")
from gpt2_beam import build_parser as beam_parser  # noqa: E402
from diff_layers import build_parser as diff_layers_parser  # noqa: E402
from run_pipeline import build_parser as work_sh_parser  # noqa: E402


def e2e_pipeline(tmp_path, e2e_dir, vocab_dir, *flags):
    args = work_sh_parser().parse_args(
        ["--preset", "micro", "--run", "r", "--runs_dir", str(tmp_path / "runs"),
         "--data_dir", e2e_dir, "--vocab_dir", vocab_dir, *flags])
    return Pipeline(args)


def parsed_stage(argv, parser=None):
    """A stage script's arguments for a pipeline argv, which starts it from the run's settings
    file (scripts/SCRIPT --config RUN_DIR/run_config.json ...)."""
    assert argv[0].startswith("scripts/") and argv[1] == "--config"
    assert argv[2].endswith("/" + RUN_CONFIG)
    return (parser or build_parser()).parse_args(argv[1:])


@pytest.mark.parametrize("flags, rank", [((), PRESETS["e2e"]["micro"]["lora_dim"]),
                                         (("--lora_dim", "8"), 8)])
def test_lora_dim_goes_from_the_preset_to_the_model_in_one_hop(tmp_path, e2e_dir, vocab_dir,
                                                               flags, rank):
    pipeline = e2e_pipeline(tmp_path, e2e_dir, vocab_dir, *flags)
    assert pipeline.settings["lora_dim"] == rank  # preset (or flag) -> RunSettings
    pipeline.settings.write(pipeline.run_dir)  # RunSettings -> run_config.json
    argv = pipeline.lora_argv("torch")
    assert "--lora_dim" not in argv  # not the stage's own: it comes from the settings file
    args = parsed_stage(argv)  # run_config.json -> gpt2_ft.py's arguments, by the same name
    assert args.lora_dim == rank
    args.init_checkpoint = None  # the base the init stage would write; the shape is in the flags
    assert model_config(args).lora_attn_dim == rank  # -> GPT2Config
    # the same through a --config file holding the stage's settings
    config = tmp_path / "stage.json"
    config.write_text(json.dumps({"lora_dim": rank, "lora_alpha": pipeline.settings["lora_alpha"],
                                  "train_data": "t.jsonl", "valid_data": "v.jsonl"}))
    args = build_parser().parse_args(["--backend", "torch", "--config", str(config)])
    assert model_config(args).lora_attn_dim == rank


def test_every_e2e_stage_argv_comes_from_the_settings(tmp_path, e2e_dir, vocab_dir):
    pipeline = e2e_pipeline(tmp_path, e2e_dir, vocab_dir, "--lr", "0.01", "--beam", "3")
    pipeline.settings.write(pipeline.run_dir)
    lora = pipeline.lora_argv("jittor")
    assert "--lr" not in lora and "--shared_dropout" in lora  # a setting / the stage's own
    assert "--resume" not in lora  # nothing to resume yet
    args = parsed_stage(lora)
    assert (args.lr, args.shared_dropout, args.backend) == (0.01, True, "jittor")
    assert (args.label_smooth, args.attn) == (0.1, "math")  # the settings of those names
    search = pipeline.command("gpt2_beam.py", pipeline.search_flags())
    micro = PRESETS["e2e"]["micro"]
    args = parsed_stage(search + ["--backend", "torch"], beam_parser())
    assert args.beam == 3 and args.eos_token_id == [50256, micro["eos_token_id"]]  # appended
    assert args.seq_len == micro["seq_len"] + micro["eval_len"]  # the stage's own value wins


def test_a_run_config_gives_a_script_the_settings_named_like_its_flags(tmp_path, capsys):
    """One rule for every script: the settings it has flags for; the others, null settings and
    the run-wide values (`run`) are left alone; a flag on the command line wins."""
    settings = RunSettings("e2e", "micro", dict(PRESETS["e2e"]["micro"], lora_dim=8, n_embd=None),
                           {"random_seed": 99, "backends": ["torch"]})
    settings.write(str(tmp_path))
    path = str(tmp_path / RUN_CONFIG)
    args = build_parser().parse_args(["--backend", "torch", "--config", path,
                                      "--train_data", "t", "--valid_data", "v", "--lr", "0.5"])
    assert (args.lora_dim, args.n_embd, args.lr) == (8, None, 0.5)
    assert args.random_seed == 10  # the run's seed is not taken: each stage passes its own
    layers = diff_layers_parser().parse_args(["--config", path, "--data", "d", "--out", "o"])
    assert (layers.random_seed, layers.lora_dim) == (1, 8)
    document = settings.to_json()
    document["settings"]["lora_dim"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(document))
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--backend", "torch", "--config", str(tmp_path / "bad.json")])
    assert exc.value.code == 2
    assert "bad.json: settings.lora_dim: must be an integer >= 0" in capsys.readouterr().err
    assert tuple(f.name for f in dataclasses.fields(RunSettings)) == RUN_SETTINGS_KEYS


def test_a_rerun_with_another_nproc_is_refused_naming_both(tmp_path, e2e_dir, vocab_dir):
    """N processes give one process's results to ~1e-6, not bit for bit: --nproc is a run's
    setting, which a rerun must not change without --force."""
    first = e2e_pipeline(tmp_path, e2e_dir, vocab_dir)
    first.settings.write(first.run_dir)
    assert first.settings.run["nproc"] == 1
    with pytest.raises(ValueError, match=r"--nproc 2 \(the run has 1\)"):
        e2e_pipeline(tmp_path, e2e_dir, vocab_dir, "--nproc", "2")
    again = e2e_pipeline(tmp_path, e2e_dir, vocab_dir, "--nproc", "2", "--force")
    assert again.settings.run["nproc"] == 2 and again.batch["train_batch_size"] == 2


def test_stage_argv_spells_values_as_flags():
    assert stage_argv("x.py", dict(a=1, b=None, c=True, d=False, e=[1, "z"], f=0.5, g=0),
                      positional=["p"]) == [
        "scripts/x.py", "p", "--a", "1", "--c", "--e", "1", "z", "--f", "0.5", "--g", "0"]


def test_run_config_is_read_back_and_a_contradicting_flag_is_refused(tmp_path, e2e_dir,
                                                                      vocab_dir):
    first = e2e_pipeline(tmp_path, e2e_dir, vocab_dir, "--lora_dim", "8")
    first.settings.write(first.run_dir)
    stored = json.loads((tmp_path / "runs" / "r" / RUN_CONFIG).read_text())
    assert stored["task"] == "e2e" and stored["preset"] == "micro"
    assert stored["settings"]["lora_dim"] == 8 and stored["run"]["random_seed"] == 10
    assert RunSettings.read(first.run_dir) == first.settings
    # a rerun without the flag resumes with the stored value
    assert e2e_pipeline(tmp_path, e2e_dir, vocab_dir).settings["lora_dim"] == 8
    # the same value again is no contradiction; another is refused, naming both values
    assert e2e_pipeline(tmp_path, e2e_dir, vocab_dir, "--lora_dim", "8").settings["lora_dim"] == 8
    with pytest.raises(ValueError, match=r"--lora_dim 2 \(the run has 8\)"):
        e2e_pipeline(tmp_path, e2e_dir, vocab_dir, "--lora_dim", "2")
    with pytest.raises(ValueError, match=r"--random_seed 11 \(the run has 10\)"):
        e2e_pipeline(tmp_path, e2e_dir, vocab_dir, "--random_seed", "11")
    # --force starts the run over with the new values
    again = e2e_pipeline(tmp_path, e2e_dir, vocab_dir, "--lora_dim", "2", "--force")
    assert again.settings["lora_dim"] == 2


def test_the_stage_runner_captures_stdout_and_logs_stderr(tmp_path):
    out = io.StringIO()
    with open(tmp_path / "log", "a") as log:
        code = run_stage([sys.executable, "-c", "import sys; print('text');"
                          "print('Compiling Operators', file=sys.stderr)"],
                         out=out, log=log, stderr=log)
    assert code == 0 and out.getvalue() == "text\n"
    assert sorted((tmp_path / "log").read_text().split("\n")) == [
        "", "Compiling Operators", "text"]


# ----------------------------------------------------------------------------- --config FILE
def write(tmp_path, text, name="c.json"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_values_are_the_defaults_and_flags_win(tmp_path):
    path = write(tmp_path, json.dumps({"lr": 0.002, "lora_dim": 4, "correct_bias": True,
                                       "train_data": "t", "valid_data": "v",
                                       "scheduler": "cosine", "max_step": 9}))
    args = build_parser().parse_args(["--backend", "torch", "--config", path, "--lr", "0.5"])
    assert (args.lr, args.lora_dim, args.correct_bias, args.scheduler, args.max_step) == (
        0.5, 4, True, "cosine", 9)
    assert (args.train_data, args.valid_data) == ("t", "v")  # required flags, given by the file
    plain = build_parser().parse_args(["--backend", "torch", "--train_data", "a",
                                       "--valid_data", "b"])  # the parser's own defaults stay
    assert (plain.lr, plain.lora_dim, plain.correct_bias) == (0.00001, None, False)


@pytest.mark.parametrize("text, message", [
    ('{"lora_dim": 4, "bogus": 1}', "c.json: unknown key 'bogus'"),
    ('{"lora_dim": 4,\n "x": }', "c.json:2: not JSON"),
    ('[1, 2]', "c.json: a --config file holds a JSON object"),
    ('{"lora_dim": -1}', "c.json: key 'lora_dim': must be an integer >= 0"),
    ('{"scheduler": "nope"}', "c.json: key 'scheduler': 'nope' is not one of"),
    ('{"correct_bias": 1}', "c.json: key 'correct_bias': expected true or false"),
    ('{"lr": true}', "c.json: key 'lr': true is not a value of this flag"),
])
def test_bad_config_files_are_usage_errors_naming_file_and_key(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--backend", "torch", "--config", path])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_config_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--backend", "torch", "--config", str(tmp_path / "no.json")])
    assert "no.json: --config file not found" in capsys.readouterr().err


def test_every_stage_script_takes_config(tmp_path):
    """Each script the pipelines start reads --config (list flags included)."""
    import importlib
    for name in ("gpt2_beam", "metric_intervals", "check_alignment",
                 "diff_layers", "beam_divergence", "generate", "classify"):
        module = importlib.import_module(name)
        assert "--config" in module.build_parser().format_help(), name
    from shared.tasks.pretrain_task import build_pretrain_parser
    path = write(tmp_path, json.dumps({"text": ["a.txt", "b.txt"], "stride": 7}))
    args = build_pretrain_parser().parse_args(["--backend", "torch", "--config", path])
    assert args.text == ["a.txt", "b.txt"] and args.stride == 7


def test_the_work_sh_tasks_share_one_definition_of_the_common_flags():
    """Every work.sh task (scripts/run_pipeline.py, task_pipelines.py, instruct_pipeline.py,
    peft_pipeline.py, preference_pipeline.py) builds its parser on run_flags.run_parser: the
    common flags with the same defaults (the dropout masks' own per task), and one flag per
    setting of the task's presets (and no other) in the settings group."""
    from shared.pipeline.run_flags import run_parser
    from shared.pipeline.task_pipelines import PARSERS, build_parser as task_parser

    def split(parser):
        group = next(g for g in parser._action_groups if g.title == "settings")
        settings = {a.dest for a in group._group_actions}
        return settings, {a.dest: a.default for a in parser._actions if a.dest not in settings}

    _, common = split(run_parser(Pipeline, "", ""))
    common.pop("exact_dropout")  # shared masks by default for the E2E tasks, not for the others
    parsers = {"e2e": work_sh_parser(), "pretrain": task_parser("pretrain"),
               "classify": task_parser("classify"), **{t: make() for t, make in PARSERS.items()}}
    assert sorted(parsers) == sorted(PRESETS)
    for task, parser in parsers.items():
        settings, flags = split(parser)
        assert settings == {key for preset in PRESETS[task].values() for key in preset
                            if not isinstance(preset[key], dict)}, task
        assert {dest: flags.get(dest) for dest in common} == common, task
        assert parser.parse_args(["--device", "cpu"]).device == "cpu"


def test_the_rlhf_presets_are_dpos_with_ppo_in_place_of_dpo():
    """One table: --task rlhf's presets are built from --task dpo's (engine.rlhf_preset), so
    the model, data, SFT, reward model and judge settings they share cannot drift apart."""
    from shared.pipeline.engine import DPO_ONLY
    assert sorted(PRESETS["rlhf"]) == sorted(PRESETS["dpo"])
    for name, rlhf in PRESETS["rlhf"].items():
        dpo = PRESETS["dpo"][name]
        shared = [key for key in dpo if key not in DPO_ONLY]
        assert [key for key in rlhf if key in dpo] == shared  # in dpo's order
        changed = {key for key in shared if rlhf[key] != dpo[key]}
        assert changed <= {"lora_dropout", "max_new_tokens"}, name
        assert rlhf["lora_dropout"] == 0.0 and not set(DPO_ONLY) & set(rlhf)
        assert {"ppo_steps", "ppo_lr", "ppo_batch_size", "kl_coef"} <= set(rlhf)


@pytest.mark.parametrize("task", ["peft", "dpo", "rlhf"])
def test_the_peft_and_preference_stages_start_from_the_run_config(tmp_path, e2e_dir, vocab_dir,
                                                                  preference_data, task):
    """Every stage command of --task peft, dpo and rlhf is `scripts/SCRIPT --config
    RUN_DIR/run_config.json` and its own flags: no setting of the run is repeated as a flag unless
    the stage uses another value in its place (its learning rate, steps and batch size)."""
    from shared.pipeline.task_pipelines import PARSERS, PIPELINES
    from shared.tasks.ppo_task import build_ppo_parser
    from shared.tasks.preference_task import build_preference_parser as preference_parser
    data = ["--data_dir", e2e_dir] if task == "peft" else ["--data", preference_data]
    args = PARSERS[task]().parse_args(["--preset", "micro", "--runs_dir", str(tmp_path), "--vocab_dir",
                                       vocab_dir, *data])
    pipeline = PIPELINES[task](args)
    pipeline.settings.write(pipeline.run_dir)
    commands = []
    pipeline.sh = lambda argv, log, launcher=None, capture=False: commands.append(argv) or ""
    for stage in pipeline.stages[1:-1]:  # each stage's commands up to its first missing output
        try:
            getattr(pipeline, f"stage_{stage}")()
        except (OSError, ValueError, KeyError):
            pass
    own = {"lr", "max_step", "train_batch_size", "seq_len", "lora_dim", "lora_alpha",
           "valid_batch_size", "weight_decay", "clip", "scheduler", "warmup_step",
           "log_interval", "eval_interval", "save_interval", "attn", "label_smooth"}
    repeated = {flag[2:] for argv in commands for flag in argv[3:]
                if flag.startswith("--") and flag[2:] in pipeline.s and flag[2:] not in own}
    assert len(commands) >= 4 and not repeated, repeated
    assert all(argv[1:3] == ["--config", pipeline.path(RUN_CONFIG)] for argv in commands)
    settings = pipeline.s
    if task == "peft":
        tune = parsed_stage(next(a for a in commands if "--peft" in a))
        assert (tune.n_embd, tune.seq_len, tune.label_smooth) == (
            settings["n_embd"], settings["seq_len"], settings["label_smooth"])
        return
    kind = "dpo" if task == "dpo" else "ppo"
    tuned = next(a for a in commands if a[0] == f"scripts/{kind}_ft.py")
    parser = preference_parser(kind) if kind == "dpo" else build_ppo_parser()
    tuned = parsed_stage(tuned, parser)
    assert (tuned.lora_dim, tuned.lora_dropout, tuned.n_embd, tuned.lr, tuned.max_step) == (
        settings["lora_dim"], settings["lora_dropout"], settings["n_embd"],
        settings[f"{kind}_lr"], settings[f"{kind}_steps"])
    if kind == "ppo":
        assert (tuned.kl_coef, tuned.rollout_batch, tuned.temperature) == (
            settings["kl_coef"], settings["rollout_batch"], settings["temperature"])
