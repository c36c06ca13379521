"""Training logs: both formats, error messages, resume truncation, agreement numbers, compare_runs."""
import json
import math
import os
import subprocess
import sys

import pytest

from shared.train.trainlog import (FORMAT_JSONL, FORMAT_MSLORA, JsonlLogWriter, TrainLogError,
                                   align_steps, loss_agreement, loss_table, read_log)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# gpt2_ft.py's stdout with the spacing it really has, plus hand-mangled spacing, tabs,
# an lr in scientific notation, an Eval line without "best ppl" (as scripts/gpt2_ft.py prints
# it) and the unrelated lines such a log carries.
MSLORA_LOG = """\
====================================================================================================
        - random_seed : 110
        - lr : 0.0002
Experiment dir : ./trained_models/GPT2_M/e2e
| epoch   1 step      100 |    100 batches | lr 0.0002 | ms/batch 195.89 | loss  3.45 | avg loss  4.12 | ppl 61.34
|epoch 1 step 200|200 batches|lr 1.99e-05|ms/batch 190.1|loss 2.10|avg loss 2.50|ppl 12.18
eval samples: 0 loss: tensor(1.2346, device='cuda:0')
eval samples: 100 loss: tensor(1.2301, device='cuda:0')
average loss 1.2345
| Eval   1 at step      200 | time: 70.32s | valid loss  1.23 | valid ppl  3.44 | best ppl  3.44 
saving checkpoint ./trained_models/GPT2_M/e2e/model.200.pt
|  epoch\t  2 step   300 |     50 batches | lr 1e-05 | ms/batch  99.00 | loss  1.90 | avg loss  1.95 | ppl  7.03
| Eval   2 at step      300 | time: 69.00s | valid loss  1.20 | valid ppl  3.32
----------------------------------------------------------------------------------------------------
End of training
"""


def train(step, loss, backend="torch", **extra):
    return {"kind": "train", "step": step, "epoch": 1, "loss": loss, "lr": 1e-4 * step,
            "grad_norm": 0.5, "tokens_per_s": 1000.0, "elapsed_s": 0.1 * step,
            "backend": backend, **extra}


def valid(step, loss):
    return {"kind": "valid", "step": step, "epoch": 1, "valid_loss": loss,
            "valid_ppl": math.exp(loss), "elapsed_s": 0.1 * step}


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def make_log(tmp_path, name, train_losses, valid_losses=(), backend="torch"):
    """A run folder whose log has the given {step: loss} training and validation losses."""
    records = [train(s, v, backend) for s, v in train_losses.items()]
    records += [valid(s, v) for s, v in dict(valid_losses).items()]
    write_jsonl(str(tmp_path / name / "train_log.jsonl"), records)
    return str(tmp_path / name)


# ---------------------------------------------------------------------------------- reading
def test_reads_jsonl_file_and_run_folder(tmp_path):
    folder = make_log(tmp_path, "run", {1: 3.0, 2: 2.5}, {2: 2.7}, backend="jittor")
    for source in (folder, os.path.join(folder, "train_log.jsonl")):
        log = read_log(source)
        assert log.format == FORMAT_JSONL and log.backend == "jittor" and log.label == "jittor"
        assert [(r.step, r.loss, r.lr) for r in log.train] == [(1, 3.0, 1e-4), (2, 2.5, 2e-4)]
        assert log.train[0].grad_norm == 0.5 and log.train[0].tokens_per_s == 1000.0
        assert [(r.step, r.valid_loss) for r in log.valid] == [(2, 2.7)]
        assert log.last_step == 2 and log.loss_resolution == 0.0
    assert read_log(folder, label="mine").label == "mine"


def test_jsonl_optional_fields_and_extra_keys(tmp_path):
    path = write_jsonl(str(tmp_path / "log.jsonl"),
                       [{"kind": "train", "step": 0, "loss": 1.5, "grad_norm": None, "note": "x"}])
    log = read_log(path)
    assert log.train[0].grad_norm is None and log.train[0].lr is None
    assert log.backend is None and log.label == "log"


def test_reads_mslora_stdout_log_with_odd_spacing(tmp_path):
    path = tmp_path / "train.log"
    path.write_text(MSLORA_LOG)
    log = read_log(str(path))
    assert log.format == FORMAT_MSLORA and log.label == "microsoft/LoRA"
    assert log.loss_resolution == 0.005
    assert [(r.epoch, r.step, r.loss, r.avg_loss, r.lr) for r in log.train] == [
        (1, 100, 3.45, 4.12, 2e-4), (1, 200, 2.10, 2.50, 1.99e-5), (2, 300, 1.90, 1.95, 1e-5)]
    # The eval's own full-precision "average loss" replaces the rounded "valid loss  1.23".
    first, second = log.valid
    assert (first.step, first.epoch, first.valid_loss) == (200, 1, 1.2345)
    assert first.valid_ppl == pytest.approx(math.exp(1.2345))
    assert (second.step, second.epoch, second.valid_loss, second.valid_ppl) == (300, 2, 1.20, 3.32)


def test_mslora_average_loss_is_ignored_when_it_disagrees(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("average loss 9.0\n"
                    "| Eval 1 at step 10 | time: 1.00s | valid loss 1.23 | valid ppl 3.42 | best ppl 3.42\n")
    assert read_log(str(path)).valid[0].valid_loss == 1.23


@pytest.mark.parametrize("lines, message", [
    (['{"kind": "train", "step": 1, "loss": 2.0}', '{"kind": "train", "step": 2, "loss": '],
     r"log\.jsonl:2: not valid JSON"),
    (['{"kind": "train", "step": 1}'], r"log\.jsonl:1: train record lacks 'loss'"),
    (['{"kind": "train", "step": true, "loss": 2.0}'], r"log\.jsonl:1: 'step' must be an integer"),
    (['{"kind": "train", "step": 1, "loss": "2.0"}'], r"log\.jsonl:1: 'loss' must be a number"),
    (['{"kind": "test", "step": 1}'], r"log\.jsonl:1: 'kind' must be one of"),
    (['{"kind": "valid", "step": -1, "valid_loss": 2.0}'], r"log\.jsonl:1: 'step' must be >= 0"),
    (['{"kind": "train", "step": 1, "loss": 2.0}', '', '[1, 2]'],
     r"log\.jsonl:3: expected a JSON object"),
    (['{"kind": "train", "step": 5, "loss": 2.0}', '{"kind": "train", "step": 3, "loss": 2.0}'],
     r"log\.jsonl:2: step 3 does not follow step 5"),
    (['{"kind": "train", "step": 1, "loss": 2.0, "backend": "torch"}',
      '{"kind": "valid", "step": 2, "valid_loss": 2.0, "backend": "jittor"}'],
     r"log\.jsonl: records from several backends"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainLogError, match=message):
        read_log(str(path))


def test_unrecognised_files_and_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\nworld\n")
    with pytest.raises(TrainLogError, match=r"notes\.txt: neither a train_log\.jsonl"):
        read_log(str(tmp_path / "notes.txt"))
    (tmp_path / "empty.log").write_text("\n  \n")
    with pytest.raises(TrainLogError, match=r"empty\.log: empty log"):
        read_log(str(tmp_path / "empty.log"))
    (tmp_path / "run").mkdir()
    with pytest.raises(TrainLogError, match=r"run folder .*run has no train_log\.jsonl"):
        read_log(str(tmp_path / "run"))
    with pytest.raises(TrainLogError, match="no such log file"):
        read_log(str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.log").write_text("| epoch 1 step 100 | garbled\n")
    with pytest.raises(TrainLogError, match=r"bad\.log:1: unreadable microsoft/LoRA train line"):
        read_log(str(tmp_path / "bad.log"))
    (tmp_path / "bad_eval.log").write_text("x\n| Eval 1 at step | nothing\n")
    with pytest.raises(TrainLogError, match=r"bad_eval\.log:2: unreadable microsoft/LoRA eval"):
        read_log(str(tmp_path / "bad_eval.log"))


# ---------------------------------------------------------------------------------- writing
def run_training(writer, steps, eval_every=4):
    for step in steps:
        writer.write(train(step, 10.0 / step))
        if step % eval_every == 0:
            writer.write(valid(step, 5.0 / step))


def test_writer_flushes_each_line(tmp_path):
    path = tmp_path / "train_log.jsonl"
    writer = JsonlLogWriter(path)
    writer.write(train(1, 2.0))
    assert json.loads(path.read_text()) == train(1, 2.0)  # readable before close
    writer.close()


def test_resumed_log_equals_uninterrupted_log(tmp_path):
    full = tmp_path / "full.jsonl"
    with JsonlLogWriter(full) as w:
        run_training(w, range(1, 13))
    resumed = tmp_path / "resumed.jsonl"
    with JsonlLogWriter(resumed) as w:
        run_training(w, range(1, 11))  # checkpoint at 8, then the crash at step 10 ...
    with open(resumed, "a") as f:
        f.write('{"kind": "train", "st')  # ... in the middle of a line
    with JsonlLogWriter(resumed, resume_step=8) as w:
        assert [r.step for r in read_log(str(resumed)).train] == list(range(1, 9))
        run_training(w, range(9, 13))
    assert resumed.read_bytes() == full.read_bytes()


def test_resume_keeps_lines_verbatim_and_fresh_start_empties(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"kind":"train","step":1,"loss":2.0,"extra":[1]}\n'
                    '{"kind":"train","step":2,"loss":1.0}\n')
    JsonlLogWriter(path, resume_step=1).close()
    assert path.read_text() == '{"kind":"train","step":1,"loss":2.0,"extra":[1]}\n'
    JsonlLogWriter(path).close()
    assert path.read_text() == ""
    JsonlLogWriter(tmp_path / "new" / "train_log.jsonl", resume_step=5).close()
    assert (tmp_path / "new" / "train_log.jsonl").read_text() == ""


def test_resume_rejects_corruption_before_the_last_line(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"kind":"train","step":1,"loss":2.0}\nGARBAGE\n{"kind":"train","step":2,"loss":1.0}\n')
    with pytest.raises(TrainLogError, match=r"train_log\.jsonl:2: not valid JSON"):
        JsonlLogWriter(path, resume_step=2)
    assert "GARBAGE" in path.read_text()  # nothing was rewritten


def test_writer_checks_records(tmp_path):
    with JsonlLogWriter(tmp_path / "train_log.jsonl") as w:
        with pytest.raises(TrainLogError, match="train record lacks 'loss'"):
            w.write({"kind": "train", "step": 1})
        w.write(train(3, 1.0))
        w.write(valid(3, 1.0))  # train and valid steps are ordered separately
        with pytest.raises(TrainLogError, match="step 3 written after step 3"):
            w.write(train(3, 1.0))
    assert len(read_log(str(tmp_path)).train) == 1


# -------------------------------------------------------------------------------- comparing
def test_align_and_agreement_numbers(tmp_path):
    a = read_log(make_log(tmp_path, "a", {1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0, 5: 0.5},
                          {2: 3.5, 4: 1.5}, "torch"))
    b = read_log(make_log(tmp_path, "b", {1: 4.0, 2: 3.0005, 3: 2.01, 4: 1.0, 6: 0.4},
                          {2: 3.5, 4: 1.4}, "jittor"))
    assert align_steps(a, b) == [(1, 4.0, 4.0), (2, 3.0, 3.0005), (3, 2.0, 2.01), (4, 1.0, 1.0)]
    assert align_steps(a, b, "valid") == [(2, 3.5, 3.5), (4, 1.5, 1.4)]
    agreement = loss_agreement(a, b, tol=1e-3)
    train_a = agreement["train"]
    assert train_a["n_steps"] == 4 and train_a["tol"] == 1e-3
    assert train_a["max_abs"] == pytest.approx(0.01)
    assert train_a["mean_abs"] == pytest.approx((0.0005 + 0.01) / 4)
    assert train_a["max_rel"] == pytest.approx(0.01 / 2.01)
    assert train_a["first_step_over"] == 3
    assert loss_agreement(a, b, tol=0.1)["train"]["first_step_over"] is None
    valid_a = agreement["valid"]
    assert valid_a["n_steps"] == 2 and valid_a["max_abs"] == pytest.approx(0.1)
    assert valid_a["first_step_over"] == 4
    table = loss_table(a, b)
    assert [list(r) for r in table][0] == ["step", "torch", "jittor", "abs_diff"]
    assert table[2]["step"] == 3 and table[2]["abs_diff"] == pytest.approx(0.01)


def test_agreement_without_common_steps_and_with_nan(tmp_path):
    a = read_log(make_log(tmp_path, "a", {1: 1.0, 2: float("nan")}, backend="torch"))
    b = read_log(make_log(tmp_path, "b", {1: 1.0, 2: 1.0}, backend="jittor"))
    c = read_log(make_log(tmp_path, "c", {7: 1.0}, backend="jittor"))
    nan_case = loss_agreement(a, b)["train"]
    assert nan_case["max_abs"] == math.inf and nan_case["first_step_over"] == 2
    empty = loss_agreement(a, c)
    assert empty["train"] == {"n_steps": 0, "max_abs": None, "mean_abs": None, "max_rel": None,
                              "first_step_over": None, "tol": 1e-3}
    with pytest.raises(ValueError, match="both logs are labelled 'torch'"):
        loss_table(a, read_log(make_log(tmp_path, "d", {1: 1.0})))


# ----------------------------------------------------------------------------- compare_runs
def run_script(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "compare_runs.py"),
                           *args], capture_output=True, text=True, cwd=ROOT)


def test_compare_runs_script(tmp_path):
    losses = {s: 5.0 / s for s in range(1, 21)}
    a = make_log(tmp_path, "torch_run", losses, {10: 1.0, 20: 0.5}, "torch")
    b = make_log(tmp_path, "jittor_run", {s: v + (2e-3 if s == 15 else 1e-5) for s, v in losses.items()},
                 {10: 1.0, 20: 0.5}, "jittor")
    (tmp_path / "torch_run" / "scores.txt").write_text("SCORES:\n=======\nBLEU: 0.6800\nNIST: 8.70\n")
    (tmp_path / "jittor_run" / "metrics.json").write_text('{"BLEU": 0.6750, "NIST": 8.65}')
    out_json, out_md = tmp_path / "cmp.json", tmp_path / "cmp.md"
    proc = run_script(a, b, "--json", str(out_json), "--md", str(out_md), "--rows", "3")
    assert proc.returncode == 1, proc.stderr  # step 15 is 2e-3 apart, over --tol 1e-3
    assert "train: 20 common steps" in proc.stdout and "first step over tol: 15" in proc.stdout
    assert proc.stderr.strip() == ("compare_runs: train loss differs by 0.002 at step 15 "
                                   "(tolerance 0.001; 1 of 20 common steps over)")
    assert "valid: 2 common steps" in proc.stdout
    assert "first and last 3" in proc.stdout
    assert "BLEU" in proc.stdout and "0.005" in proc.stdout  # torch - jittor BLEU
    result = json.loads(out_json.read_text())
    assert result["loss_agreement"]["train"]["first_step_over"] == 15
    assert result["metrics"] == {"torch": {"BLEU": 0.68, "NIST": 8.7},
                                 "jittor": {"BLEU": 0.675, "NIST": 8.65}}
    assert len(result["loss_table"]) == 20
    md = out_md.read_text()
    assert "| BLEU | 0.68 | 0.675 | 0.005 |" in md and "## Loss agreement" in md


def test_compare_runs_against_mslora_log(tmp_path):
    (tmp_path / "ms.log").write_text(MSLORA_LOG)
    ours = make_log(tmp_path, "ours", {100: 3.4512, 200: 2.1, 300: 1.9}, {200: 1.2345})
    proc = run_script(str(tmp_path / "ms.log"), ours)
    assert proc.returncode == 0, proc.stderr
    assert "train: 3 common steps" in proc.stdout and "2 decimals" in proc.stdout
    same_labels = run_script(ours, ours)
    assert same_labels.returncode == 0 and "torch A" in same_labels.stdout


def test_compare_runs_exit_status_is_the_verdict(tmp_path):
    """0 within --tol, 1 (naming the key and step) past it, a NaN or no common step."""
    losses = {s: 5.0 / s for s in range(1, 11)}
    a = make_log(tmp_path, "a", losses, {10: 1.0})
    close = make_log(tmp_path, "close", {s: v + 5e-4 for s, v in losses.items()}, {10: 1.0})
    proc = run_script(a, close)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert run_script(a, close, "--tol", "1e-4").returncode == 1
    far = make_log(tmp_path, "far", {s: v + (10.0 if s >= 7 else 0.0) for s, v in losses.items()},
                   {10: 1.0})
    proc = run_script(a, far, "--tol", "0.5")
    assert proc.returncode == 1
    assert "train loss differs by 10 at step 7 (tolerance 0.5; 4 of 10 common steps over)" \
        in proc.stderr
    valid_off = make_log(tmp_path, "valid_off", losses, {10: 1.25})
    proc = run_script(a, valid_off)
    assert proc.returncode == 1 and "valid loss differs by 0.25 at step 10" in proc.stderr
    assert "train loss" not in proc.stderr
    nan = make_log(tmp_path, "nan", {s: (math.nan if s == 3 else v) for s, v in losses.items()},
                   {10: 1.0})
    proc = run_script(a, nan, "--tol", "100")
    assert proc.returncode == 1 and "train loss differs by inf at step 3" in proc.stderr
    elsewhere = make_log(tmp_path, "elsewhere", {100: 1.0}, {100: 1.0})
    proc = run_script(a, elsewhere)
    assert proc.returncode == 1 and "share no logged step" in proc.stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--tol", "nan", "argument --tol: must be a finite number >= 0, got 'nan'"),
    ("--tol", "inf", "argument --tol: must be a finite number >= 0, got 'inf'"),
    ("--tol", "-1e-3", "argument --tol: must be a finite number >= 0, got '-1e-3'"),
    ("--rows", "0", "argument --rows: must be an integer >= 1, got '0'"),
])
def test_compare_runs_refuses_bad_tolerances(tmp_path, flag, value, message):
    a = make_log(tmp_path, "a", {1: 1.0})
    b = make_log(tmp_path, "b", {1: 11.0})
    proc = run_script(a, b, f"{flag}={value}")
    assert proc.returncode == 2 and proc.stderr.strip().endswith(message), proc.stderr
    assert proc.stdout == ""


def test_compare_runs_bad_inputs_exit_2(tmp_path):
    good = make_log(tmp_path, "good", {1: 1.0})
    proc = run_script(good, str(tmp_path / "missing"))
    assert proc.returncode == 2 and "no such log file or run folder" in proc.stderr
    (tmp_path / "bad.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n{oops\n')
    proc = run_script(good, str(tmp_path / "bad.jsonl"))
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr
    (tmp_path / "good" / "metrics.json").write_text("{")
    proc = run_script(good, good)
    assert proc.returncode == 2 and "metrics.json:1" in proc.stderr
