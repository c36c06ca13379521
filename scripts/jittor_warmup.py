#!/usr/bin/env python
"""Do Jittor's first import ahead of time, in child processes.

The first `import jittor` compiles its core (1-2 minutes) and, after a compiler change, may stop
once with "jit_utils updated, please rerun your command". Running the import here, retried,
means later commands and the test suite start with a ready cache.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = "from jittor_impl import runtime; print(runtime.self_check())"


def main(attempts: int = 3) -> int:
    print("jittor warm-up: first import compiles jittor's core (1-2 minutes on 2 cores)...",
          flush=True)
    for attempt in range(1, attempts + 1):
        proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                              cwd=ROOT)
        if proc.returncode == 0 and " ok " in proc.stdout:
            print(proc.stdout.strip().splitlines()[-1])
            return 0
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        print(f"jittor warm-up attempt {attempt}/{attempts} did not finish:\n{tail}",
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
