"""One run's settings, written once as RUN_DIR/run_config.json, and the one way a stage's argv is made.

`RunSettings` is everything a work.sh run is made from: its task and preset, the preset's table
(shared/pipeline/engine.py's PRESETS) with the user's flags in place of its values, and the
run-wide flags (seed, backends, init checkpoint, dropout, data and the task's own switches).
The pipeline writes it atomically when the run starts; a rerun of the same folder reads it back,
takes the stored value of every setting its command line leaves out, and refuses a flag that
contradicts it, naming both values (--force starts the run over with the new settings).

`stage_argv` makes a stage script's command line: `--config RUN_DIR/run_config.json`, from which
the script takes every setting named like one of its flags (shared/runtime/config_parser.py), and
then the stage's own flags: its inputs and outputs, the run-wide values it needs (seed, dropout)
and the values it uses in place of a setting of the same name (the base model's learning rate as
--lr, the beam search's longer --seq_len). So a setting goes by one name from the preset to the
script (`settings["lora_dim"]` -> run_config.json -> gpt2_ft.py's --lora_dim ->
train_args.model_config -> GPT2Config), and the logged command reruns the stage by hand.
"""
from __future__ import annotations

import dataclasses
import json
import os

from shared.runtime.atomic import write_json

RUN_CONFIG = "run_config.json"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The settings of one run: `settings` (the preset's keys) and `run` (run-wide flags)."""
    task: str
    preset: str
    settings: dict  # PRESETS[task][preset] with the flags given in place of its values
    run: dict  # random_seed, backends, init_checkpoint, exact_dropout, data, the task's switches

    def __getitem__(self, key):
        return self.settings[key]

    def to_json(self) -> dict:
        """The run_config.json document (JSON types only: tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, document, where="run_config.json"):
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(document, dict) or sorted(document) != sorted(fields):
            raise ValueError(f"{where}: not a run's settings (expected the keys "
                             f"{', '.join(fields)})")
        return cls(**document)

    def write(self, run_dir):
        write_json(os.path.join(run_dir, RUN_CONFIG), self.to_json())

    @classmethod
    def read(cls, run_dir):
        """The settings stored in `run_dir`, or None when it has none (a new run)."""
        path = os.path.join(run_dir, RUN_CONFIG)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            try:
                document = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
        return cls.from_json(document, path)


def settings_from(args, presets, task, default_preset) -> RunSettings:
    """`presets[preset]` (--preset, else `default_preset`) with every setting given as a flag
    (not None in `args`) in its place; `run` holds the run-wide values (see `run_values`)."""
    preset = args.preset or default_preset
    settings = dict(presets[preset])
    for key in settings:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return RunSettings(task=task, preset=preset, settings=settings, run={})


def resumed(stored: RunSettings, args, presets, now: RunSettings) -> RunSettings:
    """The settings of a rerun of the run that `stored` came from: the stored value of every
    preset setting the command line leaves out, and a ValueError naming both values for each
    setting it gives otherwise (run-wide flags are compared as they are)."""
    conflicts = []
    if args.preset is not None and args.preset != stored.preset:
        conflicts.append(("preset", stored.preset, args.preset))
    if stored.task != now.task:
        conflicts.append(("task", stored.task, now.task))
    settings = dict(stored.settings)
    for key in presets[stored.preset] if stored.preset in presets else ():
        value = getattr(args, key, None)
        if value is not None and value != settings.get(key):
            conflicts.append((key, settings.get(key), value))
    run = now.to_json()["run"]
    for key in sorted(set(run) | set(stored.run)):
        if run.get(key) != stored.run.get(key):
            conflicts.append((key, stored.run.get(key), run.get(key)))
    if conflicts:
        raise ValueError(
            f"{RUN_CONFIG} of this run folder holds other settings than this command gives: "
            + "; ".join(f"--{key} {new} (the run has {old})" for key, old, new in conflicts)
            + ". Rerun with the run's values to resume it (a setting left out takes the "
              "run's), add --force to start it over with the new values, or name another --run")
    return RunSettings(task=stored.task, preset=stored.preset, settings=settings, run=stored.run)


def stage_argv(script, flags: dict, positional=(), config=None) -> list:
    """The argv (after the interpreter) that starts scripts/`script` with `--config config` (the
    run's settings file) when given, then `positional` and `flags`: {name: value} where None and
    False leave the flag out, True gives the bare switch, a list the flag and then each item,
    anything else `--name str(value)`."""
    argv = [os.path.join("scripts", script), *(["--config", str(config)] if config else []),
            *map(str, positional)]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(f"--{name}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv
