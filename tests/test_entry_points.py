"""Every entry point ends the same way (shared/runtime/entry_point.py's run_script): bad input, a missing
or folder input, an output that is a file, read-only or on a full disk is one line on stderr and
exit status 2; a stop signal is 128 + its number; nothing half-written is left behind.

Read-only and full file systems are real tmpfs mounts where this machine allows mounting (root);
elsewhere those tests skip and the in-process ones (the OS boundary monkeypatched) still run.
"""
import argparse
import errno
import gc
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from shared.runtime import atomic
from shared.runtime.atomic import atomic_group, write_json, write_text
from shared.model.checkpoint import save_checkpoint
from shared.model.config import GPT2Config
from shared.runtime.entry_point import run_script
from shared.model.params import init_state_dict
from shared.runtime.arg_types import ArgumentProblem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_embd", "16", "--n_layer", "1", "--n_head", "2"]


def run(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=600, **kwargs)


def stderr_lines(text):
    """stderr's lines, less the progress Jittor's compiler prints while it builds kernels for
    more than 2 s (`Compiling Operators(i/n) ...`; how long depends on the cache and the load)."""
    return [line for line in text.strip().splitlines()
            if line.strip() and not line.lstrip().startswith("Compiling Operators(")]


def one_error_line(proc, *names, status=2):
    """The process ended with `status` and exactly one stderr line, naming each of `names`."""
    lines = stderr_lines(proc.stderr)
    assert proc.returncode == status and len(lines) == 1, (proc.returncode, proc.stderr[-2000:])
    assert all(str(name) in lines[0] for name in names), (names, lines[0])
    return lines[0]


def usage_error(proc, *names):
    """The parser's usage error (status 2) naming each of `names`; no traceback."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error:" in proc.stderr and all(str(n) in proc.stderr for n in names), proc.stderr


def leftovers(folder):
    """Every file under `folder` (temporary ones included)."""
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


def _mount(path, options):
    os.makedirs(path)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")


def _unmount(path):
    gc.collect()  # a writer that failed may still hold its file open
    subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.fixture
def full_dir(tmp_path):
    """A 64 KiB file system: a small file fits, a plot or a model does not."""
    path = tmp_path / "full"
    _mount(path, "size=64k")
    yield path
    _unmount(path)


@pytest.fixture
def report_sized_full_dir(tmp_path):
    """A 96 KiB file system: diff_layers' JSON (~67 KB) and Markdown fit, its plot does not."""
    path = tmp_path / "full"
    _mount(path, "size=96k")
    yield path
    _unmount(path)


@pytest.fixture
def read_only_dir(tmp_path):
    path = tmp_path / "ro"
    _mount(path, "size=64k,ro")
    yield path
    _unmount(path)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("x")
    return path


# ------------------------------------------------------------------------- run_script itself
def test_run_script_returns_the_works_status_and_turns_failures_into_one_line(capsys):
    assert run_script(lambda: None) == 0
    assert run_script(lambda: 1) == 1

    def raises(exc):
        def work():
            raise exc
        return work
    assert run_script(raises(ValueError("data.jsonl:3: not JSON"))) == 2
    assert capsys.readouterr().err == "error: data.jsonl:3: not JSON\n"
    assert run_script(raises(OSError(errno.ENOSPC, "No space left on device", "/o/x.json"))) == 2
    assert capsys.readouterr().err == "error: /o/x.json: No space left on device\n"
    assert run_script(raises(OSError(errno.EROFS, "Read-only file system")),
                      disk_hint="free space") == 2
    assert capsys.readouterr().err == "error: [Errno 30] Read-only file system; free space\n"
    assert run_script(raises(ArgumentProblem("--lr must be positive"))) == 2
    assert capsys.readouterr().err == "error: --lr must be positive\n"
    with pytest.raises(RuntimeError):  # not an input error: a bug keeps its traceback
        run_script(raises(RuntimeError("bug")))
    with pytest.raises(SystemExit) as stop:
        run_script(raises(ArgumentProblem("--lr must be positive")),
                   argparse.ArgumentParser(prog="x.py"))
    assert stop.value.code == 2 and "x.py: error: --lr must be positive" in capsys.readouterr().err


def test_run_script_ends_on_a_stop_signal_with_128_plus_its_number(capsys):
    def work():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the work")
    assert run_script(work) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == ("stopped by SIGTERM: no output was left "
                                               "half-written; rerun the same command to redo it")


# ------------------------------------------------------------------------------ atomic_group
def test_a_group_of_files_appears_together_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "new" / "out"
    real_fsync = os.fsync

    def full_at_the_png(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and \
                ".c.png." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(atomic.os, "fsync", full_at_the_png)
    with pytest.raises(OSError) as info:
        with atomic_group(out):
            write_json(out / "a.json", {"x": 1})
            write_text(out / "b.md", "# b\n")
            assert not (out / "a.json").exists()  # not before the group ends
            write_text(out / "c.png", "png")
    assert info.value.filename == str(out / "c.png") and info.value.errno == errno.ENOSPC
    assert not (tmp_path / "new").exists()  # the folders it made are gone again
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    with atomic_group(out):
        write_json(out / "a.json", {"x": 1})
        write_text(out / "c.png", "png")
    assert leftovers(out) == ["a.json", "c.png"]


def test_a_writers_own_disk_full_error_names_the_destination(full_dir):
    big = {"w": init_state_dict(GPT2Config(n_embd=64, n_layer=1, n_head=2), seed=0)["transformer.wte.weight"]}
    for name in ("m.safetensors", "m.pt"):  # (np.savez: a ZipFile warning when it fails)
        with pytest.raises(OSError) as info:
            save_checkpoint(full_dir / name, big)
        assert info.value.filename == str(full_dir / name), name
    assert leftovers(full_dir) == []


# --------------------------------------------------------------------------------- export_hf
@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "m.safetensors"
    save_checkpoint(path, init_state_dict(GPT2Config(n_embd=64, n_layer=2, n_head=2,
                                                     lora_attn_dim=4), seed=1))
    return path


SHAPE = ["--n_embd", "64", "--n_layer", "2", "--n_head", "2"]


def export(checkpoint, *flags):
    return run("scripts/export_hf.py", "export", "--init_checkpoint", str(checkpoint), *SHAPE,
               "--lora_dim", "4", "--lora_alpha", "8", *flags)


def test_export_to_a_file_or_below_one_is_one_line(lora_checkpoint, a_file, tmp_path):
    one_error_line(export(lora_checkpoint, "--hf_dir", str(a_file)), "--hf_dir", a_file,
                   "is a file")
    one_error_line(export(lora_checkpoint, "--peft_dir", str(a_file / "sub")), "--peft_dir",
                   "lies under the file")
    one_error_line(run("scripts/export_hf.py", "import", "--peft_dir", str(tmp_path), *SHAPE,
                       "--out", str(a_file / "l.pt")), "--out", a_file)


def test_export_to_a_read_only_folder_is_one_line(lora_checkpoint, read_only_dir):
    one_error_line(export(lora_checkpoint, "--hf_dir", str(read_only_dir / "hf")), "--hf_dir",
                   "read-only")


def test_export_onto_a_full_disk_leaves_no_folder_half_exported(lora_checkpoint, full_dir,
                                                                tmp_path):
    """The peft adapter fits, the merged model does not: neither remains."""
    proc = export(lora_checkpoint, "--peft_dir", str(tmp_path / "peft"),
                  "--hf_dir", str(full_dir / "hf"))
    one_error_line(proc, full_dir / "hf" / "model.safetensors", "No space left on device")
    assert not (tmp_path / "peft").exists() and leftovers(full_dir) == []


def test_import_of_a_truncated_adapter_or_into_a_read_only_folder(lora_checkpoint, tmp_path,
                                                                  read_only_dir):
    assert export(lora_checkpoint, "--peft_dir", str(tmp_path / "peft")).returncode == 0
    imported = ("scripts/export_hf.py", "import", "--peft_dir", str(tmp_path / "peft"), *SHAPE)
    one_error_line(run(*imported, "--out", str(read_only_dir / "l.pt")), "--out", "read-only")
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    one_error_line(run(*imported, "--out", str(tmp_path / "l.pt")), weights)
    assert not (tmp_path / "l.pt").exists()


# ------------------------------------------------------------------------------- diff_layers
@pytest.fixture(scope="module")
def traced(tmp_path_factory, e2e_dir, vocab_dir):
    """(encoded valid split, tiny checkpoint) for diff_layers.py."""
    from shared.text.e2e_data import prepare_e2e
    folder = tmp_path_factory.mktemp("diff")
    prepare_e2e(e2e_dir, str(folder), vocab_dir=vocab_dir, splits=("valid",))
    save_checkpoint(folder / "m.safetensors", init_state_dict(GPT2Config(n_embd=16, n_layer=1,
                                                                         n_head=2), seed=1))
    return folder / "valid.jsonl", folder / "m.safetensors"


def diff_layers(data, out, *flags, **kwargs):
    return run("scripts/diff_layers.py", *TINY, "--seq_len", "64", "--batch_size", "2",
               "--device", "cpu", "--data", str(data), "--out", str(out), *flags, **kwargs)


def test_diff_layers_refuses_bad_inputs_before_the_work(traced, tmp_path):
    data, checkpoint = traced
    usage_error(diff_layers(data, tmp_path / "o", "--init_checkpoint", str(tmp_path / "no.pt")),
                "--init_checkpoint", "no.pt", "file not found")
    usage_error(diff_layers(tmp_path / "no.jsonl", tmp_path / "o"), "--data", "file not found")
    usage_error(diff_layers(tmp_path, tmp_path / "o"), "--data", "is a folder")
    usage_error(diff_layers(data, tmp_path / "o", "--label_smooth", "2"), "--label_smooth")
    assert not (tmp_path / "o").exists()


def test_diff_layers_checks_its_output_folder_first(traced, a_file, read_only_dir):
    data, _ = traced
    one_error_line(diff_layers(data, a_file), "--out", a_file, "is a file")
    one_error_line(diff_layers(data, a_file / "o"), "--out", "lies under the file")
    one_error_line(diff_layers(data, read_only_dir / "o"), "--out", "read-only")


def test_diff_layers_on_a_full_disk_writes_all_outputs_or_none(traced, report_sized_full_dir):
    """The JSON (~67 KB) and the Markdown fit, the plot (~100 KB) does not: none remains."""
    data, checkpoint = traced
    full_dir = report_sized_full_dir
    proc = diff_layers(data, full_dir / "o", "--init_checkpoint", str(checkpoint))
    one_error_line(proc, full_dir / "o" / "diff_layers.png", "No space left on device")
    assert leftovers(full_dir) == [] and not (full_dir / "o").exists()


def test_diff_layers_stops_on_sigterm_with_143_and_a_note(traced, tmp_path):
    """--data is a FIFO: opening it for writing returns once the script reads it, mid-work.

    A signal that lands in the few bytecodes between the script's open() and its read() is taken
    by Python's C handler before the read blocks, so the read is not interrupted and the Python
    handler waits for the next bytecode: after a grace period the test ends the FIFO (EOF) to let
    the script reach it. Either way the script must stop with 143 and the note."""
    _, checkpoint = traced
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "scripts/diff_layers.py", *TINY, "--seq_len", "64",
                             "--device", "cpu", "--data", str(fifo), "--out", str(tmp_path / "o"),
                             "--init_checkpoint", str(checkpoint)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opened = []
    opener = threading.Thread(target=lambda: opened.append(open(fifo, "w")), daemon=True)
    opener.start()
    opener.join(timeout=300)
    try:
        assert opened, "diff_layers.py never read --data"
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            for f in opened:
                f.close()
            out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for f in opened:
            f.close()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    lines = stderr_lines(err)
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM"), err[-2000:]
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- compare_runs and plot_loss
@pytest.fixture(scope="module")
def two_logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logs")
    for name, shift in (("a", 0.0), ("b", 1e-6)):  # within compare_runs' default --tol
        with open(folder / f"{name}.jsonl", "w") as f:
            for step in range(1, 6):
                f.write(json.dumps({"kind": "train", "step": step, "epoch": 1,
                                    "loss": 5.0 - step / 10 + shift, "lr": 0.001,
                                    "backend": name}) + "\n")
    return [str(folder / "a.jsonl"), str(folder / "b.jsonl")]


@pytest.mark.parametrize("script,flags", [
    ("scripts/compare_runs.py", ("--json", "--md")),
    ("scripts/plot_loss.py", ("--out", "--lr_out"))])
def test_compare_and_plot_outputs_that_cannot_be_written(script, flags, two_logs, a_file,
                                                         tmp_path, read_only_dir, full_dir):
    first, second = flags
    assert run(script, *two_logs, first, str(tmp_path / "ok1"), second,
               str(tmp_path / "ok2")).returncode == 0  # the logs themselves are fine
    one_error_line(run(script, *two_logs, first, str(tmp_path)), first, "is a folder")
    one_error_line(run(script, *two_logs, first, str(a_file / "x")), first, "lies under the file")
    one_error_line(run(script, *two_logs, first, str(read_only_dir / "x")), first, "read-only")
    # the first output is written elsewhere, the second finds the disk full
    with pytest.raises(OSError), open(full_dir / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    proc = run(script, *two_logs, first, str(tmp_path / "one"), second, str(full_dir / "two"))
    one_error_line(proc, full_dir / "two", "No space left on device")
    assert not (tmp_path / "one").exists() and leftovers(full_dir) == ["filler"]


# ----------------------------------------------------------------------------------- work.sh
@pytest.mark.parametrize("flag", ["--runs_dir", "--logs_dir"])
def test_work_sh_checks_its_folders_before_any_stage(flag, read_only_dir, a_file, tmp_path):
    for bad in (read_only_dir / "x", a_file / "x"):
        proc = subprocess.run(["bash", "work.sh", "--task", "pretrain", "--preset", "micro",
                               "--runs_dir", str(tmp_path / "runs"), flag, str(bad)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("work.sh: stopped")]
        assert proc.returncode == 1 and len(lines) == 1 and f"{flag} {bad}" in lines[0], \
            proc.stderr
        assert "=== stage" not in proc.stdout and "Traceback" not in proc.stderr


# -------------------------------------------------------------------- clearer argument errors
def test_a_wrong_shape_checkpoint_in_classify_ft_names_the_file_and_the_key(tmp_path):
    checkpoint = tmp_path / "small.safetensors"
    save_checkpoint(checkpoint, init_state_dict(GPT2Config(n_embd=16, n_layer=1, n_head=2)))
    data = tmp_path / "sms.txt"
    data.write_text("".join(f"{'spam' if i % 2 else 'ham'}\ttext number {i}\n" for i in range(40)))
    proc = run("scripts/classify_ft.py", "--backend", "torch", "--device", "cpu", "--data",
               str(data), "--init_checkpoint", str(checkpoint), "--n_embd", "32", "--n_layer",
               "1", "--n_head", "2", "--max_step", "1", "--work_dir", str(tmp_path / "w"))
    line = one_error_line(proc, checkpoint, "mis-shaped")
    assert "(16, 48) != (32, 96)" in line, line  # the key's found and expected shapes


@pytest.mark.parametrize("flags,named", [
    (("--seq_len", "0"), "argument --seq_len: must be an integer >= 1"),
    (("--lr", "nan"), "argument --lr: must be a finite number > 0, got 'nan'"),
    (("--prompt", ""), "--prompt is empty"),
    (("--sample_tokens", "0"), "--sample_tokens")])
def test_pretrain_flags_are_checked_at_parse_time(flags, named, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("some text " * 200)
    proc = run("scripts/pretrain.py", "--backend", "torch", "--device", "cpu", "--text", str(text),
               *TINY, "--max_step", "2", "--work_dir", str(tmp_path / "w"), *flags)
    usage_error(proc, named)
    assert not (tmp_path / "w").exists()


def test_instruct_sampling_flags_are_checked_before_training(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": f"say {i}", "input": "", "output": str(i)}
                                for i in range(30)]))
    proc = run("scripts/instruct_ft.py", "--backend", "torch", "--device", "cpu", "--data",
               str(data), *TINY, "--max_step", "2", "--work_dir", str(tmp_path / "w"),
               "--max_new_tokens", "0")
    usage_error(proc, "max_new_tokens")
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------ the other scripts
def test_the_other_scripts_check_inputs_and_outputs_first(tmp_path, a_file, traced):
    data, checkpoint = traced
    missing = tmp_path / "missing.jsonl"
    cases = [
        (("scripts/gpt2_encode.py", "--input", missing, "--output", tmp_path / "o"), "--input"),
        (("scripts/gpt2_encode.py", "--input", data, "--output", a_file / "o"), "--output"),
        (("scripts/format_converting_e2e.py", tmp_path, tmp_path / "o"), "is a folder"),
        (("scripts/prepare_e2e.py", "--out_dir", a_file / "e2e"), "--out_dir"),
        (("scripts/gpt2_decode.py", "--sample_file", missing, "--input_file", data,
          "--output_ref_file", tmp_path / "r", "--output_pred_file", tmp_path / "p"),
         "--sample_file"),
        (("scripts/metric_intervals.py", "--references", missing, "--torch", data, "--jittor",
          data, "--out", tmp_path / "mi"), "--references"),
        (("scripts/beam_divergence.py", "--data", data, "--torch_checkpoint", checkpoint,
          "--jittor_checkpoint", checkpoint, "--torch_predictions", data, "--jittor_predictions",
          data, "--out", a_file / "bd"), "--out"),
        (("scripts/measure_scores.py", missing, data, "--no_meteor"), missing),
    ]
    for args, named in cases:
        one_error_line(run(*map(str, args)), named)
    usage_cases = [
        (("scripts/gpt2_beam.py", "--backend", "torch", "--data", tmp_path, *TINY), "--data"),
        (("scripts/check_alignment.py", "--init_checkpoint", checkpoint, "--data", data, *TINY,
          "--json", a_file / "x.json"), "--json"),
        (("scripts/classify.py", "--backend", "torch", "--model_dir", tmp_path, "--eval_file",
          missing, "--json", tmp_path / "m.json"), "--eval_file"),
        (("scripts/benchmark.py", "--device", "cpu", "--out", a_file / "b.md"), "--out"),
        (("scripts/generate.py", "--backend", "torch", "--device", "cpu", "--prompt", ""),
         "the prompt is empty"),
    ]
    for args, named in usage_cases:
        usage_error(run(*map(str, args)), named)
    assert leftovers(tmp_path) == ["a-file"]
