"""Bad input to the task scripts stops before any training with one line naming file and line."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *argv, vocab_dir):
    env = dict(os.environ, PYTHONPATH=ROOT, GPT2_VOCAB_DIR=vocab_dir)
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *argv],
                          capture_output=True, text=True, env=env, timeout=300)


def test_pretrain_names_an_empty_or_non_utf8_file(tmp_path, vocab_dir):
    good = tmp_path / "good.txt"
    good.write_text("Some text. " * 200, encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    proc = run("pretrain.py", "--backend", "torch", "--device", "cpu", "--text", str(good),
               str(empty), "--max_step", "1", "--work_dir", str(tmp_path / "w"), vocab_dir=vocab_dir)
    assert proc.returncode == 2 and f"{empty}: the file is empty" in proc.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00text")
    proc = run("pretrain.py", "--backend", "torch", "--device", "cpu", "--text", str(binary),
               "--max_step", "1", "--work_dir", str(tmp_path / "w"), vocab_dir=vocab_dir)
    assert proc.returncode == 2 and f"{binary}:1: not UTF-8" in proc.stderr
    proc = run("pretrain.py", "--backend", "torch", "--text", str(good), "--lora_dim", "4",
               "--max_step", "1", vocab_dir=vocab_dir)
    assert proc.returncode == 2 and "leave --lora_dim at 0" in proc.stderr
    assert not os.path.exists(tmp_path / "w" / "model.1.pt")


def test_classify_ft_names_a_line_without_tab(tmp_path, vocab_dir):
    data = tmp_path / "spam.tsv"
    data.write_text("ham\tfine\nspam call now\n", encoding="utf-8")
    proc = run("classify_ft.py", "--backend", "torch", "--device", "cpu", "--data", str(data),
               "--max_step", "1", "--work_dir", str(tmp_path / "w"), vocab_dir=vocab_dir)
    assert proc.returncode == 2 and f"{data}:2: no tab" in proc.stderr
    proc = run("classify_ft.py", "--backend", "torch", "--data", str(data), "--trainable", "lora",
               "--max_step", "1", vocab_dir=vocab_dir)
    assert proc.returncode == 2 and "--trainable lora needs --lora_dim" in proc.stderr
    proc = run("classify.py", "--backend", "torch", "--model_dir", str(tmp_path / "w"),
               "--text", "hi", vocab_dir=vocab_dir)
    assert proc.returncode == 2 and "classifier.json not found" in proc.stderr


def test_classify_ft_stops_before_training_on_one_class_data(tmp_path, vocab_dir):
    data = tmp_path / "ham_only.tsv"
    data.write_text("".join(f"ham\tfine {i}\n" for i in range(30)), encoding="utf-8")
    proc = run("classify_ft.py", "--backend", "torch", "--device", "cpu", "--data", str(data),
               "--n_embd", "32", "--n_layer", "1", "--n_head", "2", "--max_step", "2",
               "--work_dir", str(tmp_path / "w"), "--no_progress", vocab_dir=vocab_dir)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"error: {data}: no 'spam' example, so the train, valid and "
                                   f"test splits have none; a classifier needs every class "
                                   f"['ham', 'spam']")
    assert "accuracy" not in proc.stdout
    made = os.listdir(tmp_path / "w") if os.path.isdir(tmp_path / "w") else []
    assert not [n for n in made if n.startswith(("model.", "metrics", "train_log"))], made


def test_interrupted_pretraining_resumes_to_the_same_result(tmp_path, vocab_dir):
    """SIGINT mid-run saves a checkpoint; --resume finishes with the uninterrupted run's losses."""
    import json
    import signal

    from alignment.task_fixtures import write_text_file
    from backends import training_backend
    from shared.tasks.pretrain_task import (PRETRAIN_RESUME_KEYS, build_pretrain_parser,
                                            pretrain_datasets, pretrain_problems)
    from shared.text.tokenizer import load_tokenizer
    from shared.train.trainer import Trainer, TrainingInterrupted
    import pytest

    text = write_text_file(tmp_path / "story.txt")

    def trainer(work_dir, *extra, on_step=None):
        args = build_pretrain_parser().parse_args(
            ["--backend", "torch", "--device", "cpu", "--text", str(text), "--n_embd", "32",
             "--n_layer", "1", "--n_head", "2", "--seq_len", "16", "--max_step", "6",
             "--train_batch_size", "4", "--lr", "0.003", "--save_interval", "2",
             "--eval_interval", "3", "--log_interval", "1", "--no_progress", "--attn", "math",
             "--work_dir", str(work_dir), *extra])
        assert pretrain_problems(args) == []
        data = pretrain_datasets(args, load_tokenizer(vocab_dir))
        return Trainer(args, training_backend("torch"), on_step=on_step, datasets=data,
                       resume_keys=PRETRAIN_RESUME_KEYS)

    def losses(work_dir):
        with open(work_dir / "train_log.jsonl") as f:
            return [(r["step"], r["loss"]) for r in map(json.loads, f) if r["kind"] == "train"]

    trainer(tmp_path / "whole").train()

    def interrupt(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(TrainingInterrupted):
        trainer(tmp_path / "cut", on_step=interrupt).train()
    trainer(tmp_path / "cut", "--resume").train()
    cut, whole = losses(tmp_path / "cut"), losses(tmp_path / "whole")
    assert [s for s, _ in cut] == [s for s, _ in whole] == list(range(1, 7))
    assert [l for _, l in cut] == pytest.approx([l for _, l in whole], rel=1e-6)


def test_task_scripts_refuse_a_work_dir_another_process_trains_into(tmp_path, vocab_dir):
    """pretrain.py, classify_ft.py and instruct_ft.py take the run-folder lock before any work."""
    from shared.runtime.run_lock import HELD_ENV, LOCK_NAME
    work = tmp_path / "w"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from shared.runtime.run_lock import RunLock; "
         "lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()",
         str(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**{k: v for k, v in os.environ.items() if k != HELD_ENV}, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "held"
        text = tmp_path / "story.txt"
        text.write_text("Some text. " * 200, encoding="utf-8")
        spam = tmp_path / "spam.tsv"
        spam.write_text("".join(f"ham\tfine {i}\nspam\tcall now {i}\n" for i in range(20)),
                        encoding="utf-8")
        alpaca = tmp_path / "alpaca.json"
        alpaca.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": f"{i}"}
                                      for i in range(30)]), encoding="utf-8")
        common = ["--backend", "torch", "--device", "cpu", "--max_step", "1", "--n_embd", "32",
                  "--n_layer", "1", "--n_head", "2", "--work_dir", str(work)]
        for script, data in (("pretrain.py", ["--text", str(text), "--seq_len", "16",
                                              "--stride", "16"]),
                             ("classify_ft.py", ["--data", str(spam), "--max_len", "16"]),
                             ("instruct_ft.py", ["--data", str(alpaca), "--seq_len", "64"])):
            proc = run(script, *common, *data, vocab_dir=vocab_dir)
            assert proc.returncode == 2 and f"is in use by pid {holder.pid}" in proc.stderr, \
                script + proc.stderr[-2000:]
        assert sorted(os.listdir(work)) == [LOCK_NAME]  # nothing written beside the owner's lock
    finally:
        holder.kill()
        holder.wait()
