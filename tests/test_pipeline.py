"""CI smoke test of `bash work.sh`: the whole pipeline on a micro configuration (a few steps).

Checks that every stage runs through the real scripts, that the report's numbers are present
and sensible, that the plots are real images, that a rerun skips finished stages, and that a
run stopped by SIGTERM leaves nothing running and resumes to the same results.
"""
import json
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, e2e_dir, vocab_dir):
    base = tmp_path_factory.mktemp("pipeline")
    argv = ["bash", "work.sh", "--preset", "micro", "--run", "smoke", "--runs_dir", str(base / "runs"),
            "--logs_dir", str(base / "logs"), "--data_dir", e2e_dir, "--vocab_dir", vocab_dir,
            "--seed_band"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base, argv, proc.stdout


def test_report_has_both_backends_side_by_side(pipeline_run):
    base, _, _ = pipeline_run
    with open(base / "logs" / "smoke" / "report.json") as f:
        report = json.load(f)
    for backend in ("torch", "jittor"):
        metrics = report["metrics"][backend]
        assert set(metrics) >= {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
        assert all(np.isfinite(v) and v >= 0 for k, v in metrics.items() if k in
                   ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"))
    agreement = report["loss_agreement"]["train"]
    assert agreement["n_steps"] == 6
    assert 0 <= agreement["max_abs"] < 0.05  # dropout masks differ, the base and data do not
    assert len(report["loss_table"]) == 6
    check = report["final_check"]
    assert check["passed"] and check["logits_max_abs"] < 1e-3 and check["grad_params"] == 4
    beams = report["beam_agreement"]
    predictions = []
    for backend in ("torch", "jittor"):
        with open(base / "runs" / "smoke" / backend / "predict.jsonl") as f:
            predictions.append([json.loads(line)["predict"] for line in f])
    assert beams["total"] == 6  # one per MR
    assert beams["identical_predictions"] == sum(p == q for p, q in zip(*predictions))
    assert [s["name"] for s in report["stages"]] == ["data", "init", "lora", "beam", "check", "metrics"]
    assert report["versions"]["jittor"] and report["versions"]["torch"]
    with open(base / "logs" / "smoke" / "report.md") as f:
        md = f.read()
    assert "| BLEU |" in md and "![loss](loss.png)" in md


def test_report_has_the_harness_sections_with_real_numbers(pipeline_run):
    """Issue 13's sections: the per-layer check of the final weights, the beam divergence of the
    differing queries, the metric intervals with the seed band of the torch_seed2 run."""
    base, _, _ = pipeline_run
    with open(base / "logs" / "smoke" / "report.json") as f:
        report = json.load(f)
    assert report["config"]["exact_dropout"] is True  # work.sh's default now
    layers = report["per_layer"]
    assert set(layers["first_divergence"]) == {"forward", "backward"}
    assert layers["passed"] and layers["compared"] > 100 and layers["failing"] == 0
    names = [row["layer"] for row in layers["per_layer_worst"]]
    assert {"h.0", "h.1", "lm_head", "loss"} <= set(names)
    for row in layers["per_layer_worst"]:
        for key in ("forward_torch", "forward_jittor"):
            assert np.isfinite(row[key]) and 0 <= row[key] < 1e-3, row
    beams = report["beam_divergence"]
    assert beams["queries"] == report["beam_agreement"]["total"]
    assert beams["differing"] == beams["queries"] - report["beam_agreement"]["identical_predictions"]
    assert beams["analysed"] == len(beams["divergences"]) == min(beams["differing"], 20)
    for d in beams["divergences"]:
        assert d["cause"] in ("near-tie", "logits", "final selection", "implementation",
                              "no parting found on re-trace"), d
        if d["cause"] in ("near-tie", "logits"):
            assert d["step"] >= 0 and d["torch_token"] != d["jittor_token"]
            assert np.isfinite(d["margin_torch"]) and np.isfinite(d["margin_jittor"])
    intervals = report["metric_intervals"]
    for metric in ("BLEU", "NIST", "ROUGE_L", "CIDEr"):
        cross, band = intervals["cross_framework"][metric], intervals["seed_band"][metric]
        assert cross["lo"] <= cross["observed"] <= cross["hi"] and band["lo"] <= band["hi"]
        assert intervals["inside_band"][metric] in (True, False)
    with open(base / "runs" / "smoke" / "torch_seed2" / "train_log.jsonl") as f:
        assert f.readline()  # the seed band comes from a torch run that really trained
    with open(base / "logs" / "smoke" / "report.md") as f:
        md = f.read()
    for title in ("## Final metrics", "## Loss agreement", "## Final check",
                  "## Per-layer check", "## Beam divergence", "## Metric intervals"):
        assert title in md, title
    bleu = intervals["cross_framework"]["BLEU"]
    assert f"| BLEU | {bleu['observed']:+.4f} |" in md and "No seed band" not in md


@pytest.mark.parametrize("name", ["loss.png", "lr.png", "base_loss.png"])
def test_plots_are_real_images(pipeline_run, name):
    from matplotlib.image import imread
    base, _, _ = pipeline_run
    image = imread(base / "logs" / "smoke" / name)
    height, width = image.shape[:2]
    assert 600 <= height <= 2000 and 800 <= width <= 3000
    assert image[..., :3].std() > 0.01  # not blank


def test_rerun_skips_finished_stages(pipeline_run):
    base, argv, _ = pipeline_run
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0
    assert proc.stdout.count("done in an earlier run") == 7


def test_each_stage_starts_from_the_run_config_and_its_logged_command_reruns_it(pipeline_run,
                                                                              tmp_path):
    """Every stage's logged command is `scripts/SCRIPT --config RUN_DIR/run_config.json` and the
    stage's own flags; the scripts take the settings from the file by name, the stages' own
    values win (the base model's training, the beam search's length); run by hand, the torch
    beam search's command writes the pipeline's predictions again."""
    base, _, stdout = pipeline_run
    run_dir = base / "runs" / "smoke"
    commands = [shlex.split(line[2:]) for line in stdout.splitlines()
                if line.startswith("$ scripts/")]
    assert len(commands) >= 14  # init, 3 x (lora, beam, decode), check x 3, scores, intervals
    assert all(argv[1:3] == ["--config", str(run_dir / "run_config.json")] for argv in commands)
    micro = json.loads((run_dir / "run_config.json").read_text())["settings"]
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from gpt2_beam import build_parser as beam_parser
    from shared.train.train_args import build_parser as train_parser
    trainings = [train_parser().parse_args(argv[1:]) for argv in commands
                 if argv[0] == "scripts/gpt2_ft.py"]
    init, lora = trainings[0], trainings[1]  # the base model, then torch's LoRA run
    assert (init.lr, init.clip, init.max_step, init.lora_dim, init.label_smooth) == (
        micro["base_lr"], micro["base_clip"], micro["base_steps"], 0, 0.0)
    assert (lora.lr, lora.clip, lora.max_step, lora.lora_dim, lora.label_smooth) == (
        micro["lr"], micro["clip"], micro["max_step"], micro["lora_dim"], micro["label_smooth"])
    assert init.n_embd == lora.n_embd == micro["n_embd"] and lora.attn == micro["attn"]
    beam = next(argv for argv in commands if argv[0] == "scripts/gpt2_beam.py")
    args = beam_parser().parse_args(beam[1:])
    assert (args.beam, args.seq_len) == (micro["beam"], micro["seq_len"] + micro["eval_len"])
    beam[beam.index("--work_dir") + 1] = str(tmp_path)
    proc = subprocess.run([sys.executable, *beam], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = (tmp_path / "predict.jsonl").read_text()
    assert again == (run_dir / "torch" / "predict.jsonl").read_text()


def session_processes(sid):
    """PIDs of the live processes of session `sid` (zombies run nothing and are left out)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session
                pids.append(int(name))
    return pids


@pytest.mark.slow
def test_sigterm_stops_training_cleanly_and_a_rerun_resumes_to_the_same_result(pipeline_run,
                                                                               tmp_path):
    """As `timeout`, `kill PID` or a scheduler do: SIGTERM to work.sh only, during jittor's LoRA
    training. A second run of the folder is refused meanwhile; nothing is left running; the
    rerun takes over a stale claim and ends with the results of the uninterrupted run."""
    import time
    reference, ref_argv, _ = pipeline_run
    argv = list(ref_argv)
    for flag, value in (("--run", "stopped"), ("--runs_dir", str(tmp_path / "runs")),
                        ("--logs_dir", str(tmp_path / "logs"))):
        argv[argv.index(flag) + 1] = value
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []

    def read_until(predicate):
        for line in proc.stdout:
            seen.append(line)
            if predicate(line):
                return
        raise AssertionError("work.sh ended early:\n" + "".join(seen)[-3000:])

    try:
        read_until(lambda line: line.startswith("=== stage 1/7"))
        second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 1
        assert f"is in use by pid {proc.pid}" in second.stderr
        assert os.path.realpath(tmp_path / "runs" / "stopped") in second.stderr
        read_until(lambda line: line.startswith("$ scripts/gpt2_ft.py --config")
                   and "--backend jittor" in line)
        read_until(lambda line: line.startswith("| Eval   1 at step"))
        stage_pids = session_processes(proc.pid)
        proc.send_signal(signal.SIGTERM)
        seen.append(proc.communicate(timeout=600)[0])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(seen)
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM while running" in out and "stopped at step" in out
    assert "run the same command again to resume" in out
    assert len(stage_pids) >= 2  # work.sh and its training stage at least
    deadline = time.time() + 30
    while session_processes(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert session_processes(proc.pid) == []
    # a claim left by a process that no longer runs (a work.sh killed with SIGKILL)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim = {"pid": dead.pid, "host": os.uname().nodename, "started": "earlier",
             "command": "bash work.sh (killed)"}
    with open(tmp_path / "runs" / "stopped" / "run.lock", "w") as f:
        json.dump(claim, f)
    rerun = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "taking over" in rerun.stderr and f"pid {dead.pid}" in rerun.stderr
    assert "resumed from step" in rerun.stdout and "already finished" in rerun.stdout
    assert not os.path.exists(tmp_path / "runs" / "stopped" / "run.lock")
    for backend in ("torch", "jittor"):
        ref_dir, got_dir = reference / "runs" / "smoke" / backend, tmp_path / "runs" / "stopped" / backend
        for name in ("predict.jsonl", "e2e_pred.txt", "metrics.json"):
            assert (got_dir / name).read_text() == (ref_dir / name).read_text(), (backend, name)
        ref_log, got_log = ((d / "train_log.jsonl").read_text().splitlines() for d in (ref_dir, got_dir))
        from shared.model.checkpoint import read_checkpoint
        ref_w, got_w = (read_checkpoint(d / "model.6.pt") for d in (ref_dir, got_dir))
        assert sorted(got_w) == sorted(ref_w)
        for name in ref_w:
            np.testing.assert_array_equal(got_w[name], ref_w[name], err_msg=f"{backend} {name}")
        drop = ("tokens_per_s", "elapsed_s")
        assert [{k: v for k, v in json.loads(line).items() if k not in drop} for line in got_log] == \
            [{k: v for k, v in json.loads(line).items() if k not in drop} for line in ref_log]
