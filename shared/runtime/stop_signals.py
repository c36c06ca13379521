"""The signals that ask a run to stop, and how a script without save points obeys them.

SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, job schedulers, systemd) and SIGHUP (a closed
terminal) all mean "stop, keeping what is finished". The trainer answers them at its next update
(shared/train/trainer.py); scripts with nothing to save (beam search, scoring, the pipeline between
stages) use `raise_on_stop_signals`, which turns them into a `StopSignal` exception so that
`finally` blocks run and atomic writes (shared/runtime/atomic.py) drop their temporary files instead of
the process dying where it stands. The conventional exit status is 128 + the signal number.
"""
from __future__ import annotations

import contextlib
import os
import signal

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


# While any handler of ours is set: the handler each signal had before the first of them.
_ORIGINAL, _DEPTH = {}, {}


def _restore_originals_in_child():
    """After a fork: the child (e.g. a worker of the multiprocessing pool Jittor compiles in,
    which the pool ends with SIGTERM) gets the handlers from before ours, and so dies on
    SIGTERM as it would without them instead of running a handler meant for its parent."""
    for sig, original in _ORIGINAL.items():
        try:
            signal.signal(sig, original)
        except (ValueError, TypeError):
            pass
    _ORIGINAL.clear()
    _DEPTH.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restore_originals_in_child)


@contextlib.contextmanager
def stop_signal_handler(handler):
    """`handler` for SIGINT/SIGTERM/SIGHUP while active, the earlier handlers after; in a
    thread other than the main one (where Python cannot set handlers) signals act as usual."""
    saved = {}
    try:
        for sig in STOP_SIGNALS:
            saved[sig] = signal.signal(sig, handler)
            _ORIGINAL.setdefault(sig, saved[sig])
            _DEPTH[sig] = _DEPTH.get(sig, 0) + 1
    except ValueError:
        pass
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
            _DEPTH[sig] -= 1
            if not _DEPTH[sig]:
                del _DEPTH[sig], _ORIGINAL[sig]


@contextlib.contextmanager
def raise_on_stop_signals():
    """While active (main thread only), the first stop signal raises StopSignal where the main
    thread is; later ones are ignored so that the unwinding and its clean-up are not cut short."""
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise StopSignal(signum)

    with stop_signal_handler(handler):
        yield

