"""The benchmark's run: every measurement of backends/benchmark_steps.py in a fresh process, in order
(the main cards' variants, their --peft_methods and --preference_tasks rows, beam search, the
extra cards), the report saved after each one.

A fresh process per measurement: no memory held by the other framework's caches, and no
interference between them (torch's eager steps ran ~1.6x slower with Jittor loaded). This
module imports no framework; the child is the benchmark script itself, called with --_measure.
"""
import json
import os
import subprocess
import sys

from shared.pipeline.benchmark_plan import (BEAM_BACKENDS, BEAM_SETTINGS, PEERS, beam_key,
                                            benchmark_environment, benchmark_settings, failure_summary,
                                            peak_tflops, peft_variants, preference_variants, save)

from .benchmark_peers import peer_problem

RESULT_PREFIX = "BENCHMARK-RESULT "
MEASURE_FLAG = "--_measure"


def print_result(result):
    """The child's answer: one JSON line that measure_in_child picks out of its output."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def child_environment(name):
    """The peers run without the folders that hold Jittor on PYTHONPATH: Jittor 1.3.11 needs
    numpy<2, installed beside it, and transformers' imports (scipy, scikit-learn) fail there."""
    env = dict(os.environ)
    if name in PEERS and env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            d for d in env["PYTHONPATH"].split(os.pathsep)
            if not os.path.isdir(os.path.join(d, "jittor")))
    return env


def measure_in_child(script, argv, kind, name, card):
    """Run `script argv --_measure kind name card` and return the result it prints."""
    command = [sys.executable, os.path.abspath(script), *argv, MEASURE_FLAG, kind, name, card]
    proc = subprocess.run(command, capture_output=True, text=True, env=child_environment(name))
    sys.stderr.write(proc.stderr[-4000:])
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"exit {proc.returncode}: {failure_summary(proc.stderr or proc.stdout)}")


def split(names):
    return [n for n in names.split(",") if n]


class BenchmarkRun:
    """The record of one benchmark run (shared/pipeline/benchmark_plan.py renders it), filled measurement by
    measurement; a failing measurement is noted and the others go on."""

    def __init__(self, script, argv, args):
        self.script, self.argv, self.args = script, argv, args
        env = benchmark_environment(args.device, args.precision)
        self.peak = peak_tflops(env["gpu"], args.peak_tflops)
        self.results = {"environment": env, "settings": benchmark_settings(args),
                        "peak_tflops": self.peak, "training": {}, "beam": {}, "failed": {}}
        if getattr(args, "resume", False):
            self._resume(os.path.splitext(args.out)[0] + ".json")

    def _resume(self, path):
        """Keep the measurements of an earlier run of the same settings on the same kind of
        device (its record at `path`); what failed or was not measured there runs again."""
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        beam_only = () if record.get("beam") else BEAM_SETTINGS  # settings a new beam part may set
        for key, value in self.results["settings"].items():
            if key not in beam_only and record.get("settings", {}).get(key) != value:
                raise ValueError(f"--resume: {path} was measured with {key}="
                                 f"{record.get('settings', {}).get(key)!r}, this run has {value!r}")
        for key in ("gpu", "device", "precision"):
            if record["environment"].get(key) != self.results["environment"].get(key):
                raise ValueError(f"--resume: {path} was measured with {key}="
                                 f"{record['environment'].get(key)!r}, this run has "
                                 f"{self.results['environment'].get(key)!r}")
        for part in ("training", "beam", "preference", "skipped"):
            if record.get(part):
                self.results[part] = record[part]
        self.results["sessions"] = record.get("sessions", 1) + 1

    def _measured(self, part, card, name):
        return name in self.results[part].get(card, {})

    def _measure(self, kind, name, card, label):
        try:
            return measure_in_child(self.script, self.argv, kind, name, card)
        except Exception as exc:  # one failing variant must not lose the others' numbers
            self.results["failed"][label] = f"{type(exc).__name__}: {str(exc)[:700]}"
            print(f"{kind} {card} {name} FAILED: {exc}", flush=True)
            return None

    def _runnable(self, card, variants):
        """The variants that can run here; peers that cannot are noted as not measured."""
        runnable = []
        for variant in variants:
            problem = peer_problem(variant, self.args.device) if variant in PEERS else None
            if problem:
                self.results.setdefault("skipped", {})[f"{card} {variant}"] = problem
                print(f"train {card} {variant} skipped: {problem}", flush=True)
            else:
                runnable.append(variant)
        return runnable

    def train(self, card, variants):
        for variant in self._runnable(card, variants):
            if self._measured("training", card, variant):
                continue
            r = self._measure("train", variant, card, f"{card} {variant}")
            if r is None:
                continue
            r["mfu"] = r["model_tflops"] / self.peak if self.peak else None
            self.results["training"].setdefault(card, {})[variant] = r
            save(self.results, self.args.out)  # partial results survive an interrupted run
            print(f"train {card:8s} {variant:16s} {r['tokens_per_s']:10,.0f} tok/s  "
                  f"{r['step_ms']:7.1f} ms/step  {r['model_tflops']:6.1f} TFLOP/s  "
                  f"peak {r.get('peak_device_mib') or 0:8.0f} MiB", flush=True)

    def preference(self, card, variants):
        """The --preference_tasks rows ("torch task=dpo") of `card`."""
        for variant in variants:
            if variant in self.results.get("preference", {}).get(card, {}):
                continue
            r = self._measure("preference", variant, card, f"{card} {variant}")
            if r is None:
                continue
            self.results.setdefault("preference", {}).setdefault(card, {})[variant] = r
            save(self.results, self.args.out)
            print(f"train {card:8s} {variant:16s} {r['tokens_per_s']:10,.0f} tok/s  "
                  f"{r['step_ms']:7.1f} ms/step  peak {r.get('peak_device_mib') or 0:8.0f} MiB",
                  flush=True)

    def beam(self, card, backends, caches):
        for name in (beam_key(backend, cache) for backend in backends for cache in caches):
            if self._measured("beam", card, name):
                continue
            r = self._measure("beam", name, card, f"beam {card} {name}")
            if r is None:
                continue
            self.results["beam"].setdefault(card, {})[name] = r
            save(self.results, self.args.out)
            print(f"beam  {card:8s} {name:20s} {r['queries']} MRs in {r['seconds']:.1f}s "
                  f"({r['queries_per_s']:.1f} MRs/s)  peak {r.get('peak_device_mib') or 0:8.0f} MiB",
                  flush=True)


def run_benchmark(script, argv, args):
    """The whole benchmark of `args` (scripts/benchmark.py's flags); returns the report's text.
    The reference peers are left out without --reference_src."""
    run = BenchmarkRun(script, argv, args)
    variants = [v for v in split(args.backends) if args.reference_src or not v.startswith("reference")]
    for card in split(args.cards):
        run.train(card, variants)
        run.train(card, peft_variants(split(getattr(args, "peft_methods", "") or "")))
        run.preference(card, preference_variants(split(getattr(args, "preference_tasks", "") or "")))
    if args.test_data:
        for card in split(args.beam_cards):
            run.beam(card, [b for b in BEAM_BACKENDS if b in variants], split(args.beam_caches))
    for card in split(args.extra_cards):  # model sizes, after the main figures
        run.train(card, split(args.extra_backends))
    return save(run.results, args.out)
