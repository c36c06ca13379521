"""The signals that ask a run to stop, and how a script without save points obeys them.

SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, job schedulers, systemd) and SIGHUP (a closed
terminal) all mean "stop, keeping what is finished". The trainer answers them at its next update
(shared/trainer.py); scripts with nothing to save (beam search, scoring, the pipeline between
stages) use `raise_on_stop_signals`, which turns them into a `StopSignal` exception so that
`finally` blocks run and atomic writes (shared/atomic.py) drop their temporary files instead of
the process dying where it stands. The conventional exit status is 128 + the signal number.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(signum: int) -> int:
    """What a shell reports for a process ended by this signal."""
    return 128 + signum


class StopSignal(KeyboardInterrupt):
    """A stop signal arrived; `exit_code` is the status the process should end with.

    A KeyboardInterrupt (not an Exception), so `except Exception` handlers let it through, as
    they let Ctrl-C through."""

    def __init__(self, signum: int, message: str | None = None, exit_code: int | None = None):
        self.signum = signum
        self.exit_code = exit_status(signum) if exit_code is None else exit_code
        super().__init__(message or f"stopped by {signal_name(signum)}")


def default_in_forked_child(owner_pid: int, signum: int) -> bool:
    """For a handler that a forked child inherited (Jittor compiles in a multiprocessing pool
    forked from the training process, and the pool stops its workers with SIGTERM): in any
    process but `owner_pid`, act as if no handler were set (SIGINT raises KeyboardInterrupt,
    the others end the process) and return True; in the owner return False."""
    if os.getpid() == owner_pid:
        return False
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return True


@contextlib.contextmanager
def raise_on_stop_signals():
    """While active (main thread only), the first stop signal raises StopSignal where the main
    thread is; later ones are ignored so that the unwinding and its clean-up are not cut short."""
    raised, owner = [], os.getpid()

    def handler(signum, frame):
        if default_in_forked_child(owner, signum):
            return
        if not raised:
            raised.append(signum)
            raise StopSignal(signum)

    saved = {}
    try:
        for sig in STOP_SIGNALS:
            saved[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: Python cannot set handlers; signals act as usual
        pass
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def run_stoppable(main, *args, **kwargs):
    """`main(...)` of a script without save points: a stop signal ends it with a note and the
    status 128 + signum (`sys.exit(run_stoppable(main))`); its outputs are written atomically,
    so nothing half-written remains and rerunning the same command redoes the work."""
    try:
        with raise_on_stop_signals():
            return main(*args, **kwargs)
    except StopSignal as exc:
        print(f"\n{exc}: no output was left half-written; rerun the same command to redo it",
              file=sys.stderr, flush=True)
        return exc.exit_code
