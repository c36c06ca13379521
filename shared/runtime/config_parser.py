"""`--config FILE` for every script: a JSON object of flag values that become the defaults.

A run's settings are written once (the pipeline's run_config.json, shared/pipeline/run_settings.py)
and a stage script can read them back instead of taking each value as a flag. The file's keys are
the script's flag names without the dashes (`{"lora_dim": 4, "correct_bias": true}`); a flag given
on the command line wins over the file; a key the script does not take, a value its flag's type or
choices refuse, and JSON that does not parse are usage errors naming the file (and the key or line).

A run's settings file (RUN_DIR/run_config.json: the keys task, preset, settings and run) is read by
one rule: each script takes the values of `settings` (the preset's table with the user's flags)
whose names are its flags and ignores the rest, and a null setting leaves the script's default.
The run-wide values under `run` (seeds, backends, input files) are not flags of the stages: the
pipeline passes what a stage needs of them on its command line, with the stage's own values.
"""
from __future__ import annotations

import argparse
import json
import sys

from shared.runtime.utf8_file import read_utf8

CONFIG_HELP = ("JSON object of this script's flag values (keys: the flag names without --; "
               "unknown keys are refused), or a work.sh run's run_config.json (its settings "
               "named like this script's flags): they become the defaults, and a flag given on "
               "the command line wins")


RUN_SETTINGS_KEYS = ("task", "preset", "settings", "run")  # a run's settings file


class ConfigFileError(ValueError):
    """A --config file that cannot be read or that this script cannot take (names file and key)."""


def config_path(argv) -> str | None:
    """The value of --config in `argv` (the last one given), without parsing anything else."""
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def read_config(path) -> dict:
    """The JSON object in `path`; ConfigFileError naming the file (and line) when it is not one."""
    text = read_utf8(path, ConfigFileError, what="--config file")
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path}:{exc.lineno}: not JSON ({exc.msg}, column {exc.colno})") \
            from None
    if not isinstance(values, dict):
        raise ConfigFileError(f"{path}: a --config file holds a JSON object of flag values, "
                              f"not {type(values).__name__}")
    return values


def is_run_settings(values) -> bool:
    """Whether a --config document is a run's settings (run_config.json), not a flag object."""
    return (sorted(values) == sorted(RUN_SETTINGS_KEYS)
            and all(isinstance(values[key], dict) for key in ("settings", "run")))


def _checked(parser, action, value, where):
    """`value` as `action` would store it, or ConfigFileError naming `where` (file and key)."""
    if value is None:
        return None
    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where}: expected true or false, got {value!r}")
        return action.const if value else action.default
    appended = isinstance(action, argparse._AppendAction)  # `--flag V` adds V to the default
    many = (appended or action.nargs in ("+", "*")
            or isinstance(action.nargs, int) and action.nargs > 1)
    if many and not isinstance(value, list):
        value = [value]  # one value, as `--flag VALUE` gives on the command line
    items = value if many else [value]
    converted = []
    for item in items:
        if isinstance(item, (dict, list, bool)):
            raise ConfigFileError(f"{where}: {json.dumps(item)} is not a value of this flag")
        if action.type is None:
            item = str(item)
        else:
            try:
                item = action.type(item if isinstance(item, str) else str(item))
            except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                raise ConfigFileError(f"{where}: {str(exc) or repr(item)}") from None
        if action.choices is not None and item not in action.choices:
            raise ConfigFileError(f"{where}: {item!r} is not one of "
                                  f"{', '.join(map(str, action.choices))}")
        converted.append(item)
    if appended:  # as each item given once as `--flag ITEM`
        return list(action.default or []) + converted
    return converted if many else converted[0]


def config_defaults(parser, path) -> dict:
    """{action: its new default} for the values in the --config file `path`."""
    actions = [a for a in parser._actions if a.option_strings
               and a.dest not in (argparse.SUPPRESS, "help", "config")]
    by_key = {option[2:]: a for a in actions for option in a.option_strings
              if option.startswith("--")}  # a flag's name (an alias too), else its dest
    for action in actions:
        by_key.setdefault(action.dest, action)
    values = read_config(path)
    if is_run_settings(values):  # the settings this script has flags for (module docstring)
        return {by_key[key]: _checked(parser, by_key[key], value, f"{path}: settings.{key}")
                for key, value in values["settings"].items()
                if key in by_key and value is not None}
    out = {}
    for key, value in values.items():
        action = by_key.get(key)
        if action is None:
            raise ConfigFileError(f"{path}: unknown key {key!r} ({parser.prog} has no --{key})")
        out[action] = _checked(parser, action, value, f"{path}: key {key!r}")
    return out


class ConfigArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser with `--config FILE` (module docstring): the file's values are the
    defaults and the command line wins, so a stage can be started from its run's settings."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--config", metavar="FILE", default=None, help=CONFIG_HELP)

    def parse_known_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        path = config_path(argv)
        if path is None:
            return super().parse_known_args(argv, namespace)
        try:
            defaults = config_defaults(self, path)
        except ConfigFileError as exc:
            self.error(str(exc))
        saved = {action: (action.default, action.required) for action in defaults}
        try:  # the parser's own defaults come back afterwards: it may parse again
            for action, value in defaults.items():
                action.default, action.required = value, False
            return super().parse_known_args(argv, namespace)
        finally:
            for action, (default, required) in saved.items():
                action.default, action.required = default, required
