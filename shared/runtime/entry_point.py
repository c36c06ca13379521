"""How every script ends: its known failures as one line on stderr and an exit status.

`run_script(work)` runs a script's work under `raise_on_stop_signals` (shared/runtime/stop_signals.py)
and turns what can go wrong with its inputs and outputs into the statuses the project's scripts
share, written once for all of them:
  - an argument problem (`ArgumentProblem`) is the parser's usage error, status 2;
  - bad input (every input error of shared/ is a ValueError: CheckpointError, VocabError,
    E2EDataError, TrainLogError, HFFormatError, ...), a missing file, or an output that cannot be
    written (read-only, a file where a folder should be, a full disk: OSError) is
    `error: <message naming the file>`, status 2; `disk_hint` adds how to go on after an OSError
    other than a missing file;
  - a stop signal (SIGINT, SIGTERM, SIGHUP) is a note and status 128 + its number; the outputs
    are written atomically (shared/runtime/atomic.py), so nothing half-written remains.
The training scripts add their own cases (shared/train/training_script.py).
"""
from __future__ import annotations

import sys

from shared.runtime.stop_signals import StopSignal, exit_status, raise_on_stop_signals
from shared.runtime.arg_types import ArgumentProblem

#: What `work` may raise for bad input or an unwritable output (besides OSError).
INPUT_ERRORS = (ValueError,)


def describe_os_error(exc: OSError) -> str:
    """`PATH: reason` where the error names its file (Python's str adds `[Errno N]` and quotes)."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{names}: {exc.strerror}"


def stop_note(exc: StopSignal) -> str:
    return f"\n{exc}: no output was left half-written; rerun the same command to redo it"


def run_script(work, parser=None, *, errors=(), disk_hint: str | None = None,
               on_stop=stop_note, interrupted=(), prefix: str = "error: ",
               failure_status: int = 2) -> int:
    """`work()`'s exit status (its return value when an int, else 0) with its known failures turned into
    one line on stderr and the status the script returns.

    parser: the script's argparse parser, which reports an `ArgumentProblem` (without one it is
    an error line like the others);
    errors: more exception classes that mean bad input here (e.g. RuntimeError of a framework
    refusing a checkpoint); disk_hint: said after an OSError other than a missing file;
    on_stop: the note printed for a StopSignal; interrupted: exception classes carrying `signum`
    whose message is printed as is (the trainer's saved stop), status 128 + signum; prefix and
    failure_status: how an error line starts and the status it ends with (work.sh: 1)."""
    try:
        with raise_on_stop_signals():
            status = work()
    except ArgumentProblem as exc:
        if parser is not None:
            parser.error(str(exc))
        print(f"{prefix}{exc}", file=sys.stderr)
        return failure_status
    except interrupted as exc:
        if str(exc):  # empty: a rank other than 0 of several, stopping with rank 0, which said it
            print(str(exc), file=sys.stderr)
        return exit_status(exc.signum)
    except (*INPUT_ERRORS, FileNotFoundError, *errors) as exc:
        print(f"{prefix}{describe_os_error(exc) if isinstance(exc, OSError) else exc}",
              file=sys.stderr)
        return failure_status
    except OSError as exc:
        message = describe_os_error(exc)
        print(f"{prefix}{message}; {disk_hint}" if disk_hint else f"{prefix}{message}",
              file=sys.stderr)
        return failure_status
    except StopSignal as exc:
        print(on_stop(exc), file=sys.stderr, flush=True)
        return exc.exit_code
    return status if isinstance(status, int) else 0


def run_stoppable(main, *args, **kwargs):
    """`main(...)` of a script without save points, run by `run_script`:
    a stop signal ends it with a note and the status 128 + signum, bad input or an unwritable
    output with one error line and status 2 (`sys.exit(run_stoppable(main))`)."""
    return run_script(lambda: main(*args, **kwargs))
