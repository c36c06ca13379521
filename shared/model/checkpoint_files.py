"""Where a checkpoint's weights are on disk (a file, a transformers folder, sharded or not, an
OpenAI TF prefix; a run's latest saved step) and the error its readers raise.

The bottom of shared/model/: checkpoint.py, pretrained.py and lora_settings.py all find weights
through it, so none of them needs another to know where a checkpoint lives.
"""
from __future__ import annotations

import glob
import os
import re

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")
_TF_DATA = re.compile(r"\.data-\d{5}-of-\d{5}$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file and the keys."""


# ----------------------------------------------------------------------------------- locating
def tf_prefix(path):
    """The TF checkpoint prefix `path` names (a folder holding one, PREFIX.index, a data file,
    or PREFIX itself); None when it names none."""
    path = os.fspath(path)
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.isfile(state):
            with open(state, encoding="utf-8", errors="replace") as f:
                m = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', f.read(), re.M)
            if m:
                prefix = m.group(1)
                candidates = [os.path.join(path, prefix), os.path.join(path, os.path.basename(prefix))]
                for candidate in candidates:  # TF writes absolute paths; folders get moved
                    if os.path.isfile(candidate + ".index"):
                        return candidate
        indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
        return indexes[0][:-len(".index")] if len(indexes) == 1 else None
    if path.endswith(".index") and os.path.isfile(path):
        return path[:-len(".index")]
    if _TF_DATA.search(path) and os.path.isfile(path):
        return _TF_DATA.sub("", path)
    if not os.path.exists(path) and os.path.isfile(path + ".index"):
        return path
    return None


def weights_location(path):
    """('file', FILE), ('sharded', INDEX_JSON) or ('tf', PREFIX): where the weights of what
    `path` names are. Raises FileNotFoundError naming what was looked for."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in HF_WEIGHTS:
            if os.path.isfile(os.path.join(path, name)):
                kind = "sharded" if name.endswith(".index.json") else "file"
                return kind, os.path.join(path, name)
        prefix = tf_prefix(path)
        if prefix:
            return "tf", prefix
        raise FileNotFoundError(f"checkpoint folder {path} holds no {', '.join(HF_WEIGHTS)} "
                                f"and no TF checkpoint (model.ckpt.index)")
    if path.endswith(".index.json") and os.path.isfile(path):
        return "sharded", path
    prefix = tf_prefix(path)
    if prefix:
        return "tf", prefix
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return "file", path


def checkpoint_path_problem(flag, path):
    """The readable problem with `--flag path`, or None when it names loadable weights."""
    try:
        weights_location(path)
    except FileNotFoundError as exc:
        return f"{flag} {path}: {exc}" if os.path.isdir(path) else f"{flag} {path}: file not found"
    return None


def latest_checkpoint_step(work_dir):
    """The last step N with both model.N.pt and trainer_state.N.npz in `work_dir`, or None."""
    steps = []
    for path in glob.glob(os.path.join(work_dir, "trainer_state.*.npz")):
        m = re.search(r"trainer_state\.(\d+)\.npz$", path)
        if m and os.path.isfile(os.path.join(work_dir, f"model.{m.group(1)}.pt")):
            steps.append(int(m.group(1)))
    return max(steps) if steps else None
