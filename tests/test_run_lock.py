"""A run folder is owned by one process: a live owner refuses others by name, a dead one's claim
is taken over with a note, and a lock around a folder covers what is inside it."""
import json
import os
import signal
import subprocess
import sys

import pytest

from shared.runtime.run_lock import HELD_ENV, LOCK_NAME, RunFolderBusy, RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = """
import sys
sys.path.insert(0, {root!r})
from shared.runtime.run_lock import RunLock
lock = RunLock(sys.argv[1], command="holder " + sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
lock.release()
print("released", flush=True)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds RunLock(folder) until stopped; yields a starter."""
    procs = []

    def start(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=ROOT), str(folder)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={k: v for k, v in os.environ.items() if k != HELD_ENV})
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def no_inherited_claims(monkeypatch):
    monkeypatch.delenv(HELD_ENV, raising=False)


def test_claim_records_the_owner_and_release_removes_it(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder, command="python train.py") as lock:
        with open(folder / LOCK_NAME) as f:
            record = json.load(f)
        assert record["pid"] == os.getpid() and record["command"] == "python train.py"
        assert record["host"] and record["started"]
        assert os.environ[HELD_ENV] == lock.path  # inherited by the stages this process starts
    assert not os.path.exists(folder / LOCK_NAME)
    assert HELD_ENV not in os.environ
    with RunLock(folder):  # free again
        pass


def test_live_owner_refuses_a_second_claim_naming_itself(tmp_path, holder):
    folder = tmp_path / "run"
    proc = holder(folder)
    with pytest.raises(RunFolderBusy) as err:
        RunLock(folder).acquire()
    message = str(err.value)
    assert f"pid {proc.pid}" in message and f"holder {folder}" in message
    assert os.path.realpath(folder) in message and f"kill {proc.pid}" in message
    proc.stdin.close()
    assert proc.stdout.readline().strip() == "released"
    proc.wait()
    with RunLock(folder):
        pass


def test_claim_of_a_killed_process_is_taken_over_with_a_note(tmp_path, holder, capsys):
    folder = tmp_path / "run"
    proc = holder(folder)
    proc.send_signal(signal.SIGKILL)  # no clean-up: the lock file stays, its flock goes
    proc.wait()
    assert os.path.isfile(folder / LOCK_NAME)
    with RunLock(folder, command="second"):
        with open(folder / LOCK_NAME) as f:
            assert json.load(f)["pid"] == os.getpid()
    note = capsys.readouterr().err
    assert "taking over" in note and f"pid {proc.pid}" in note and "no longer runs" in note


def test_enclosing_folder_lock_covers_its_subfolders_except_for_its_own_stages(tmp_path, holder,
                                                                              monkeypatch):
    proc = holder(tmp_path / "run")
    with pytest.raises(RunFolderBusy, match=f"pid {proc.pid}"):
        RunLock(tmp_path / "run" / "torch").acquire()
    assert not os.path.exists(tmp_path / "run" / "torch" / LOCK_NAME)
    # a stage started by the owner inherits the owner's claim through the environment
    monkeypatch.setenv(HELD_ENV, str(tmp_path / "run" / LOCK_NAME))
    with RunLock(tmp_path / "run" / "torch"):
        pass
    # the same process may also claim a subfolder of its own run folder
    monkeypatch.delenv(HELD_ENV)
    with RunLock(tmp_path / "mine"), RunLock(tmp_path / "mine" / "jittor"):
        pass


def test_training_into_a_work_dir_in_use_is_refused(tmp_path, holder, encoded):
    work = tmp_path / "work"
    proc = holder(work)
    argv = ["--backend", "torch", "--device", "cpu", "--train_data", str(encoded / "train.jsonl"),
            "--valid_data", str(encoded / "valid.jsonl"), "--n_embd", "32", "--n_layer", "1",
            "--n_head", "2", "--max_step", "2", "--work_dir", str(work), "--no_progress"]
    env = {k: v for k, v in os.environ.items() if k != HELD_ENV}
    result = subprocess.run([sys.executable, "scripts/gpt2_ft.py", *argv], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"is in use by pid {proc.pid}" in result.stderr
    assert os.path.realpath(work) in result.stderr
    assert sorted(os.listdir(work)) == [LOCK_NAME]  # nothing written beside the owner's lock
