"""Script faults that gave raw tracebacks or surprises (issue 11): each is now a one-line
error naming the file, or checked before the work starts, or behaves as a user expects."""
import os
import subprocess
import sys

import pytest

from shared.model.checkpoint import save_checkpoint
from shared.model.config import GPT2Config
from shared.model.params import init_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


def test_beam_checks_its_output_place_before_the_search(tmp_path, e2e_dir, vocab_dir):
    from shared.text.e2e_data import prepare_e2e
    prepare_e2e(e2e_dir, str(tmp_path / "data"), vocab_dir=vocab_dir, splits=("valid",))
    config = GPT2Config(n_embd=16, n_layer=1, n_head=2)
    save_checkpoint(tmp_path / "m.safetensors", init_state_dict(config, seed=1))
    (tmp_path / "file").write_text("x")
    proc = run("scripts/gpt2_beam.py", "--backend", "torch", "--device", "cpu", "--data",
               str(tmp_path / "data" / "valid.jsonl"), "--n_embd", "16", "--n_layer", "1",
               "--n_head", "2", "--init_checkpoint", str(tmp_path / "m.safetensors"),
               "--seq_len", "96", "--eval_len", "4", "--work_dir", str(tmp_path / "file" / "out"),
               "--no_progress")
    assert proc.returncode == 2 and "--work_dir" in proc.stderr, proc.stderr
    assert "beam search:" not in proc.stdout and "Traceback" not in proc.stderr


def test_measure_scores_checks_the_json_path_before_scoring(tmp_path):
    (tmp_path / "ref.txt").write_text("a b c\n")
    (tmp_path / "pred.txt").write_text("a b c\n")
    (tmp_path / "file").write_text("x")
    proc = run("scripts/measure_scores.py", str(tmp_path / "ref.txt"), str(tmp_path / "pred.txt"),
               "--no_meteor", "--json", str(tmp_path / "file" / "scores.json"))
    assert proc.returncode == 2 and "--json" in proc.stderr, proc.stderr
    assert "SCORES" not in proc.stdout and "Traceback" not in proc.stderr


def test_format_converting_strips_a_byte_order_mark(tmp_path):
    raw = tmp_path / "train.txt"
    raw.write_bytes(b"\xef\xbb\xbfname : Aromi||Aromi is here.\n")
    proc = run("scripts/format_converting_e2e.py", str(raw), str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert '"context": "name : Aromi"' in (tmp_path / "out.jsonl").read_text()


def test_an_empty_raw_file_is_an_error(tmp_path):
    raw = tmp_path / "train.txt"
    raw.write_bytes(b"")
    proc = run("scripts/format_converting_e2e.py", str(raw), str(tmp_path / "out.jsonl"))
    assert proc.returncode == 2 and "train.txt" in proc.stderr and "no examples" in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_safetensors_get_the_usual_file_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    state = init_state_dict(GPT2Config(n_embd=8, n_layer=1, n_head=2), seed=0)
    for name in ("m.safetensors", "m.npz", "m.pt"):
        save_checkpoint(tmp_path / name, state)
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name


def test_encode_without_vocab_or_network_gives_the_same_hint_as_generate(tmp_path, monkeypatch,
                                                                        capsys):
    import requests

    import shared.text.tokenizer as tokenizer_module
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import gpt2_encode
    finally:
        sys.path.pop(0)

    def offline(name):
        raise requests.exceptions.ConnectionError("HTTPSConnectionPool: Max retries exceeded")
    monkeypatch.setattr(tokenizer_module, "resolve_vocab_dir", lambda flag=None: None)
    monkeypatch.setattr(tokenizer_module.tiktoken, "get_encoding", offline)
    tokenizer_module._cache.pop("tiktoken:gpt2", None)
    (tmp_path / "in.jsonl").write_text('{"context": "a", "completion": "b"}\n')
    assert gpt2_encode.main(["--input", str(tmp_path / "in.jsonl"), "--output",
                             str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "give --vocab or set GPT2_VOCAB_DIR" in err and "Traceback" not in err


def test_work_sh_default_output_is_not_the_committed_logs(tmp_path):
    from shared.pipeline.engine import report_dir
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import run_pipeline
    finally:
        sys.path.pop(0)
    args = run_pipeline.build_parser().parse_args(["--preset", "micro", "--runs_dir",
                                                   str(tmp_path / "runs")])
    assert args.logs_dir is None
    assert report_dir(args, "micro-default") == str(tmp_path / "runs" / "micro-default")
    args = run_pipeline.build_parser().parse_args(["--logs_dir", str(tmp_path / "logs")])
    assert report_dir(args, "x") == str(tmp_path / "logs" / "x")
