"""Run one stage of a pipeline as a child process that stops when the pipeline is told to stop.

`timeout`, `kill PID`, job schedulers, systemd and a closed terminal signal only the process they
started. While a stage runs, `run_stage` forwards SIGINT/SIGTERM/SIGHUP to it, keeps streaming
its output while it saves and exits (the trainer finishes its update and writes a checkpoint),
then raises `StageStopped` carrying the stage's status, so the pipeline stops there instead of
starting the next stage. The child also runs
  - in its own process group: Ctrl-C in a terminal reaches the pipeline only, which forwards it
    once (a second SIGINT would make the trainer abort without saving);
  - with a parent-death signal (Linux): if the pipeline is killed outright (SIGKILL), the stage
    gets SIGTERM and stops cleanly rather than running on, re-parented to init. Linux sends it
    again on each re-parenting (once per pipeline thread that outlives the one that started the
    stage), so it may come twice: stages act on the first stop signal and ignore repeats.
After a stopped stage, whatever it left in its process group (a JVM, a compiler) is sent SIGTERM.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading

from shared.runtime.stop_signals import (STOP_SIGNALS, StopSignal, exit_status, signal_name,
                                         stop_signal_handler)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
try:  # loaded here, before any fork: the child between fork and exec should only call into it
    import ctypes
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except (ImportError, OSError):
    _LIBC = None


class StageStopped(StopSignal):
    """A stop signal arrived while a stage ran; the stage was told and has exited."""

    def __init__(self, signum: int, returncode: int, argv):
        self.returncode = returncode
        status = returncode if returncode > 0 else (
            exit_status(-returncode) if returncode < 0 else exit_status(signum))
        how = (f"exit status {returncode}" if returncode >= 0
               else f"ended by {signal_name(-returncode)}")
        super().__init__(signum, f"stopped by {signal_name(signum)} while running "
                                 f"`{_short(argv)}` ({how})", exit_code=status)


def _short(argv, limit=100):
    """The command without the interpreter's path, cut to `limit` characters (its log has it all)."""
    text = shlex.join(argv[1:] if argv and argv[0] == sys.executable else argv)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _child_setup(parent_pid):
    """Runs in the child between fork and exec (see the module docstring)."""
    os.setpgid(0, 0)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def run_stage(argv, *, cwd=None, env=None, log=None, out=None, stderr=None) -> int:
    """Run `argv`, copying its merged stdout/stderr line by line to `out` (default sys.stdout)
    and to the open text file `log`; return its exit code. `stderr`: an open file that takes the
    stderr instead (then `out` gets the stdout alone). Raises StageStopped after forwarding a
    stop signal to it and waiting for it to exit. Main thread only (it sets signal handlers)."""
    out = out if out is not None else sys.stdout
    received, announced = [], []
    child = None

    def forward(signum, frame):  # prints nothing: a write here could re-enter one in progress
        received.append(signum)
        if child is not None:
            child.send_signal(signum)  # a no-op once the child has been reaped

    def announce():
        while len(announced) < len(received):
            signum = received[len(announced)]
            announced.append(signum)
            out.write(f"\n[{signal_name(signum)}: passed on to `{_short(argv)}` (pid "
                      f"{child.pid}); waiting for it to stop]\n")
            out.flush()

    # Blocked from before the fork until the handlers are in place, so no signal falls between
    # the child starting and the pipeline knowing about it (the child unblocks them itself).
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    handlers = stop_signal_handler(forward)
    try:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT if stderr is None else stderr,
                                 text=True, bufsize=1,
                                 preexec_fn=lambda parent=os.getpid(): _child_setup(parent))
        handlers.__enter__()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def copy_output():  # in a thread, so the main thread waits on the child itself
        for line in child.stdout:
            out.write(line)
            out.flush()  # also when the pipeline's output is a pipe (`| tee`, a CI log)
            if log is not None:
                log.write(line)

    reader = threading.Thread(target=copy_output, name="stage-output", daemon=True)
    reader.start()
    try:
        while True:
            try:
                code = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                announce()
        announce()
        if received:  # leftovers of the stage in its group (a JVM its scorer started), which
            try:      # would also keep its output open; the group id stays taken while used
                os.killpg(child.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        reader.join()
    finally:
        handlers.__exit__(None, None, None)
        if child.poll() is None:  # an error here (not a stop signal): do not leave it running
            child.terminate()
            child.wait()
    if received:
        raise StageStopped(received[0], code, argv)
    return code
