"""`bash work.sh --task peft` (shared/pipeline/peft_pipeline.py): a micro run of two methods in both
backends, its Table-3-style report and trainable counts, resume of finished stages and of a beam
stage cut short, and bad --methods refused before anything is written."""
import json
import os
import subprocess

import pytest

from shared.model.config import GPT2Config
from shared.model.params import parameter_counts
from shared.model.peft_methods import PeftSettings
from shared.pipeline.engine import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("bitfit", "prefix")


def work(base, vocab_dir, *argv):
    cmd = ["bash", "work.sh", "--task", "peft", "--preset", "micro", "--run", "p",
           "--runs_dir", str(base / "runs"), "--logs_dir", str(base / "logs"),
           "--vocab_dir", vocab_dir, "--no_meteor", *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def peft_run(tmp_path_factory, vocab_dir):
    base = tmp_path_factory.mktemp("peft_pipeline")
    proc = work(base, vocab_dir, "--methods", ",".join(METHODS))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(base / "logs" / "p" / "report.json") as f:
        return base, json.load(f)


def micro_config(method):
    micro = PRESETS["peft"]["micro"]
    flags = {k: v for k, v in micro["method_settings"][method].items() if k != "lr"}
    return GPT2Config.from_model_card(micro["model_card"], n_embd=micro["n_embd"],
                                      n_layer=micro["n_layer"], n_head=micro["n_head"],
                                      lora_attn_dim=0, peft=PeftSettings(method, **flags))


@pytest.mark.slow
def test_report_has_a_row_per_method_and_backend_with_peft_s_counts(peft_run):
    base, report = peft_run
    assert list(report["methods"]) == list(METHODS)
    micro = PRESETS["peft"]["micro"]
    e, layers = micro["n_embd"], micro["n_layer"]
    n = micro["method_settings"]["prefix"]["num_virtual_tokens"]
    expected = {"bitfit": (11 * layers + 1) * e, "prefix": n * layers * 2 * e}  # peft's formulas
    for method, row in report["methods"].items():
        assert row["trainable_params"] == expected[method]
        assert (row["trainable_params"], row["all_params"]) == parameter_counts(micro_config(method))
        assert row["trainable_line"].startswith(f"trainable params: {expected[method]:,d} || ")
        assert set(row["backends"]) == {"torch", "jittor"}
        for values in row["backends"].values():
            assert values["metrics"]["BLEU"] is not None and values["train_seconds"] > 0
            assert values["peak_memory_mib"] > 50 and values["peak_memory_kind"] == "process RSS"
        torch_bleu = row["backends"]["torch"]["metrics"]["BLEU"]
        assert row["difference"]["BLEU"] == torch_bleu - row["backends"]["jittor"]["metrics"]["BLEU"]
        assert row["beam_agreement"]["total"] == micro["test_limit"]
        assert row["loss_agreement"]["train"]["max_abs"] < 1e-4
    markdown = (base / "logs" / "p" / "report.md").read_text()
    assert "| method | backend | trainable params | BLEU | NIST | METEOR | ROUGE_L | CIDEr |" \
        in markdown
    for method in METHODS:
        assert f"| {method} | torch - jittor |" in markdown
        assert f"| {method} | torch | {expected[method]:,d} |" in markdown
        with open(base / "logs" / "p" / f"loss_{method}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert (base / "logs" / "p" / f"{method}_jittor_train_log.jsonl").is_file()


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_resumes_a_cut_beam_stage(peft_run, vocab_dir):
    base, report = peft_run
    again = work(base, vocab_dir, "--methods", ",".join(METHODS))
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("(done in an earlier run") == 6
    assert "$ scripts/" not in again.stdout
    # the beam stage stopped after three of its four searches: only the fourth runs again
    state_path = base / "runs" / "p" / "stages.json"
    state = json.loads(state_path.read_text())
    for stage in ("beam", "metrics", "report"):
        state["stages"].pop(stage)
    state_path.write_text(json.dumps(state))
    os.remove(base / "runs" / "p" / "prefix" / "jittor" / "beam" / "e2e_pred.txt")
    resumed = work(base, vocab_dir, "--methods", ",".join(METHODS))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("$ scripts/gpt2_beam.py") == 1
    assert "--backend jittor" in resumed.stdout.split("$ scripts/gpt2_beam.py")[1].splitlines()[0]
    with open(base / "logs" / "p" / "report.json") as f:
        rerun = json.load(f)
    for method in METHODS:
        assert rerun["methods"][method]["backends"]["jittor"]["metrics"] == \
            report["methods"][method]["backends"]["jittor"]["metrics"]
    other = work(base, vocab_dir, "--methods", "lora")
    assert other.returncode == 1 and "--methods ['lora']" in other.stderr


@pytest.mark.parametrize("methods,named", [("lora,nope", "unknown method(s) nope"),
                                           ("prefix,prefix", "a method is named twice"),
                                           (",", "no method")])
def test_bad_methods_are_one_line_exit_2_and_write_nothing(tmp_path, vocab_dir, methods, named):
    proc = work(tmp_path, vocab_dir, "--methods", methods)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--methods" in lines[0] and named in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()
