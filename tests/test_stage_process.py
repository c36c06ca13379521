"""run_stage: a stop signal sent to the pipeline reaches the running stage once, the pipeline
waits for the stage to stop and ends with its status, and no process of the stage outlives it
(even when the pipeline itself is killed outright)."""
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stage that, like the trainer, answers a stop signal by "saving" (after a pause) and exiting
# with 128 + signum; it reports every signal it received. --grandchild: it also starts a
# process in its group that it leaves behind; --report FILE: writes what it got there too.
STAGE = """
import os, signal, subprocess, sys, time
got = []
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, lambda signum, frame: got.append(signum))
extra = ""
if "--grandchild" in sys.argv:
    extra = " grandchild %d" % subprocess.Popen(["sleep", "300"]).pid
print("ready %d pgid %d%s" % (os.getpid(), os.getpgid(0), extra), flush=True)
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.5)  # a duplicate signal would arrive meanwhile
if "--report" in sys.argv:
    with open(sys.argv[sys.argv.index("--report") + 1], "w") as f:
        f.write("got %s" % got)
print("saved, got %s" % got, flush=True)
sys.exit(128 + got[0] if got else 3)
"""

# The pipeline side: one run_stage call, StageStopped turned into the exit status.
DRIVER = """
import sys
sys.path.insert(0, {root!r})
from shared.pipeline.stage_process import StageStopped, run_stage
try:
    with open(sys.argv[1], "w") as log:
        code = run_stage([sys.executable, "-c", {stage!r}, *sys.argv[2:]], log=log)
except StageStopped as exc:
    print("pipeline: %s" % exc, flush=True)
    sys.exit(exc.exit_code)
print("pipeline: stage exit %d" % code, flush=True)
sys.exit(0)
"""


def start_driver(tmp_path, *stage_args):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(root=ROOT, stage=STAGE),
                             str(tmp_path / "stage.log"), *stage_args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    first = proc.stdout.readline().split()
    assert first[0] == "ready", first
    return proc, first


def gone(pid, timeout=10.0):
    """The process ended (a zombie counts: it runs nothing) within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_to_the_pipeline_reaches_the_stage_and_sets_the_exit_status(tmp_path, sig):
    proc, ready = start_driver(tmp_path)
    stage_pid, stage_pgid = int(ready[1]), int(ready[3])
    assert stage_pgid == stage_pid != proc.pid  # its own process group
    proc.send_signal(sig)  # the pipeline only, as `kill PID`, `timeout` or systemd do
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert f"saved, got [{int(sig)}]" in out  # the pipeline waited for the stage to save
    assert f"stopped by {sig.name} while running" in out and f"exit status {128 + sig}" in out
    assert f"{sig.name}: passed on to" in out
    assert gone(stage_pid)
    with open(tmp_path / "stage.log") as f:
        assert "saved, got" in f.read()


def test_ctrl_c_in_a_terminal_reaches_the_stage_once(tmp_path):
    proc, ready = start_driver(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    out, _ = proc.communicate(timeout=30)
    assert "saved, got [2]" in out  # once: a second SIGINT would make the trainer abort unsaved
    assert proc.returncode == 130


def test_processes_left_by_a_stopped_stage_are_ended(tmp_path):
    proc, ready = start_driver(tmp_path, "--grandchild")
    grandchild = int(ready[5])
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert gone(grandchild)


def test_stage_stops_when_the_pipeline_is_killed_outright(tmp_path):
    report = tmp_path / "report.txt"
    proc, ready = start_driver(tmp_path, "--report", str(report))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert gone(int(ready[1]))
    if sys.platform.startswith("linux"):  # parent-death signal: it stopped cleanly, on SIGTERM
        # Linux sends it each time the stage is re-parented: once per thread of the killed
        # pipeline that outlived the one that started the stage (here its output reader), so one
        # or two; the trainer and run_stoppable scripts act on the first and ignore repeats.
        got = report.read_text()
        assert got in ("got [15]", "got [15, 15]"), got


def test_a_stage_that_ends_by_itself_returns_its_code(tmp_path):
    from shared.pipeline.stage_process import run_stage
    handler_before = signal.getsignal(signal.SIGTERM)
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        code = run_stage([sys.executable, "-c", "print('one'); print('two'); raise SystemExit(3)"],
                         log=log)
    assert code == 3
    assert log_path.read_text() == "one\ntwo\n"
    assert signal.getsignal(signal.SIGTERM) == handler_before  # handlers restored
