"""The harness proves its own power: typical port bugs are planted in the Jittor twin at test time
(monkeypatching, no file edits) and each must be flagged and localized to the right module, step
or quantity. Forward and backward bugs go through alignment.auto_diff as scripts/diff_layers.py
calls it (alignment.gpt2_trace.auto_diff_case: the per-layer trace with the float64 noise-floor
rule), optimizer and data-path bugs through one
teacher-forced training step (alignment.drift), beam-search bugs through alignment.divergence_step.
The kill rate is printed at the end (and written to $ALIGNMENT_REPORT_DIR/planted_bugs.json).
"""
import dataclasses
import os
import types

import numpy as np
import pytest

from alignment import auto_diff
from alignment.drift import backend_args, run_drift
from alignment.gpt2_trace import auto_diff_case, build_jittor, random_batch
from alignment.harness import seeded_state, tiny_config
from alignment.planted_bugs import MODEL_BUGS
from shared.runtime.atomic import write_json
from shared.decode.beam_spec import BeamSettings
from shared.model.config import GPT2Config
from shared.model.params import no_decay

RESULTS = {}  # bug -> (killed, localized to)
# Finished hypotheses of many lengths compete (the length penalty matters), min_length makes the
# search run past the short sentences the tiny model prefers, and no token may repeat (n = 1), so
# the n-gram rule acts at every step
BEAM = BeamSettings(beam=4, eval_len=16, min_length=6, length_penalty=0.8, no_repeat_ngram_size=1,
                    eos_token_ids=(50256, 628, 13))
# ------------------------------------------------------------------- forward / backward bugs
@pytest.fixture(scope="module")
def gpt2_case():
    config = tiny_config(lora_dim=4)
    return config, seeded_state(config, 0), random_batch(config, seed=1, vocab=2000)


@pytest.mark.parametrize("bug", list(MODEL_BUGS))
def test_model_bug_is_flagged_and_localized(bug, gpt2_case, monkeypatch):
    config, state, inputs = gpt2_case
    plant, dropout, expected = MODEL_BUGS[bug]
    model = build_jittor(config, state, dropout=dropout)
    plant(monkeypatch, model)
    tm, jm, feed, options = auto_diff_case(config, state, inputs, dropout=dropout, jittor_model=model)
    try:
        result = auto_diff(tm, jm, feed, **options)
    finally:
        monkeypatch.undo()
    where = {d: result.first_divergence[d] for d in ("forward", "backward")}
    RESULTS[bug] = (not result.passed, where)
    assert not result.passed, f"{bug}: not flagged"
    for direction, module in expected.items():
        assert where[direction] == module, f"{bug}: localized to {where}, expected {expected}"


# ------------------------------------------------------------------ optimizer / data-path bugs
def tiny_train_config(lora_dim=4):
    return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, n_ctx=64,
                      lora_attn_dim=lora_dim, lora_attn_alpha=16)


def train_batches(n=2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, 2000, size=(4, 17))
        mask = np.ones((4, 16), dtype=np.float32)
        mask[0, -3:] = 0
        out.append({"input": ids[:, :-1], "target": ids[:, 1:], "mask": mask})
    return out


def drift_with(plant, lora_dim=4, **args):
    from backends import training_backend
    config = tiny_train_config(lora_dim)
    a = backend_args(**args)
    tb = training_backend("torch")(config, a)
    jb = training_backend("jittor")(config, a)
    plant(jb)
    return run_drift(config, train_batches(), [2e-3, 4e-3], mode="teacher", backends=(tb, jb))


def _shift_targets(original):
    def to_device(batch):
        shifted = dict(batch, target=np.roll(batch["target"], -1, axis=1))
        return original(shifted)
    return to_device


STEP_BUGS = {
    # name: (plant(monkeypatch, jittor backend), backend args, lora_dim, check(first divergence))
    "weight decay applied to biases/LayerNorm": (
        lambda mp, jb: [g.__setitem__("weight_decay", 0.1) for g in jb.optimizer.param_groups],
        dict(weight_decay=0.1, no_decay_bias=True, lr=1e-2), 0,
        lambda fd: fd["quantity"] == "param" and no_decay(fd["name"]) and fd["step"] == 1),
    "Adam bias correction without sqrt": (
        lambda mp, jb: mp.setattr("jittor_impl.optim.math",
                                  types.SimpleNamespace(sqrt=lambda x: x)),
        {}, 4, lambda fd: fd["quantity"] == "param" and fd["step"] == 1),
    "beta2 0.99 instead of 0.999": (
        lambda mp, jb: [g.__setitem__("betas", (0.9, 0.99)) for g in jb.optimizer.param_groups],
        {}, 4, lambda fd: fd["quantity"] == "exp_avg_sq" and fd["step"] == 1),
    "learning rate schedule not applied": (
        lambda mp, jb: mp.setattr("jittor_impl.train.set_lr", lambda optimizer, lr: None),
        dict(lr=1e-3), 4, lambda fd: fd["quantity"] == "lr" and fd["step"] == 1),
    "labels shifted in the data path": (
        lambda mp, jb: setattr(jb, "to_device", _shift_targets(jb.to_device)),
        {}, 4, lambda fd: fd["quantity"] == "data" and fd["name"] == "target"),
}


@pytest.mark.parametrize("bug", list(STEP_BUGS))
def test_training_step_bug_is_flagged_and_localized(bug, monkeypatch):
    plant, args, lora_dim, check = STEP_BUGS[bug]
    report = drift_with(lambda jb: plant(monkeypatch, jb), lora_dim=lora_dim, **args)
    monkeypatch.undo()
    fd = report.first_divergence()
    RESULTS[bug] = (fd is not None, fd)
    assert fd is not None, f"{bug}: not flagged"
    assert check(fd), f"{bug}: localized to {fd}"


def test_training_step_without_bug_passes():
    """The same teacher-forced check on the unmodified twins finds nothing (no false alarm)."""
    report = drift_with(lambda jb: None, lora_dim=4)
    assert report.first_divergence() is None


# ---------------------------------------------------------------------------- beam-search bugs
BEAM_QUERIES = 2  # the MRs each beam bug is searched on


@pytest.fixture(scope="module")
def beam_case(vocab_dir, e2e_dir):
    """The tiny E2E model, a pool of test MRs, and torch's outputs and spec traces, computed once
    per settings (only the Jittor twin gets bugs)."""
    from alignment.divergence_step import next_logits_fn, traced_search
    from alignment.tiny_e2e_model import encoded_split, trained_state
    from alignment.tiny_e2e_model import tiny_config as e2e_config
    from torch_impl import beam as torch_beam
    from torch_impl.model import GPT2LMModel as TModel
    state = trained_state(vocab_dir, e2e_dir)
    pool = [list(c) for c, _ in encoded_split(vocab_dir, e2e_dir, "test", 100)]
    tm = TModel(e2e_config())
    tm.load_state_numpy(state)
    tm.eval()
    outputs, traces = {}, {}

    def torch_output(settings, i):
        if (settings, i) not in outputs:
            q = pool[i]
            outputs[settings, i] = torch_beam.beam_search(
                tm, np.array([q]), np.array([len(q)]), settings).cpu().numpy()[0]
        return outputs[settings, i]

    def torch_side(settings, indices):
        for i in indices:
            if (settings, i) not in traces:
                traces[settings, i] = traced_search(next_logits_fn("torch", tm), pool[i], settings)
        return [(pool[i], torch_output(settings, i), traces[settings, i]) for i in indices]

    def observable(settings, bug_settings, breaks_rule):
        """The first BEAM_QUERIES MRs of the pool whose torch output changes when the settings
        do what the bug does (a bug that changes no output cannot be seen in any output), and,
        with `breaks_rule`, whose changed output breaks a per-step rule of `settings` (so the
        output itself shows the search step at fault). Which MRs qualify depends on the trained
        model's last bits (CPU kernels differ across machines), hence a search, not fixed MRs."""
        from alignment.divergence_step import rule_violations
        found = [i for i in range(len(pool))
                 if not np.array_equal(torch_output(settings, i), torch_output(bug_settings, i))
                 and (not breaks_rule or rule_violations(torch_output(bug_settings, i), settings))]
        assert len(found) >= BEAM_QUERIES, (
            f"only {len(found)} of {len(pool)} test MRs show {bug_settings}: the tiny model "
            f"cannot show this bug")
        return found[:BEAM_QUERIES]
    return state, torch_side, observable


def beam_bug_outcome(beam_case, monkeypatch, plant, settings, indices):
    from alignment.divergence_step import beam_divergence, next_logits_fn
    from alignment.tiny_e2e_model import tiny_config as e2e_config
    from jittor_impl import beam as jittor_beam
    from jittor_impl.model import GPT2LMModel as JModel
    state, torch_side, _ = beam_case
    reference = torch_side(settings, indices)
    jm = JModel(e2e_config())
    jm.load_state_numpy(state)
    jm.eval()
    plant(monkeypatch)
    outcomes = []
    for query, t_out, t_spec in reference:
        j_out = jittor_beam.beam_search(jm, np.array([query]), np.array([len(query)]), settings).numpy()[0]
        outcomes.append(beam_divergence(query, None, next_logits_fn("jittor", jm), settings,
                                        t_out, j_out, torch_spec=t_spec))
    monkeypatch.undo()
    return outcomes


@pytest.mark.slow
def test_beams_without_bug_agree(beam_case, monkeypatch):
    """No false alarm on the MRs, and with the settings, that the planted bugs below are searched
    on."""
    _, _, observable = beam_case
    for bug, (_, _, settings, bug_settings, breaks_rule) in BEAM_BUGS.items():
        indices = observable(settings, bug_settings, breaks_rule)
        outcomes = beam_bug_outcome(beam_case, monkeypatch, lambda mp: None, settings, indices)
        assert outcomes == [None] * len(indices), (bug, outcomes)


# bug -> (plant in the Jittor twin, where it must be localized, settings, the settings that
# make the spec do what the bug does, whether the MRs must show it as a broken per-step rule)
BEAM_BUGS = {
    "beam length penalty inverted": (
        lambda mp: mp.setattr("jittor_impl.beam.length_divisor",
                              lambda length, lp: float(np.float32(length ** -lp))),
        "final selection (rule 4)", BEAM,
        dataclasses.replace(BEAM, length_penalty=-BEAM.length_penalty), False),
    "beam n-gram ban missing": (
        lambda mp: mp.setattr("jittor_impl.beam.banned_ngram_mask",
                              lambda history, cur_len, n, vocab_size: __import__(
                                  "jittor_impl.runtime", fromlist=["jt"]).jt.zeros(
                                  (history.shape[0], vocab_size), dtype="bool")),
        # An output that repeats no token could not be told apart from a final-selection bug
        # (the spec may have finished it too), so the MRs are ones where the bugged output repeats.
        "search steps (rules 2a-2f)", BEAM, dataclasses.replace(BEAM, no_repeat_ngram_size=0), True),
}


@pytest.mark.slow
@pytest.mark.parametrize("bug", list(BEAM_BUGS))
def test_beam_bug_is_flagged_and_localized(bug, beam_case, monkeypatch):
    plant, where, settings, bug_settings, breaks_rule = BEAM_BUGS[bug]
    _, _, observable = beam_case
    indices = observable(settings, bug_settings, breaks_rule)
    outcomes = beam_bug_outcome(beam_case, monkeypatch, plant, settings, indices)
    flagged = [o for o in outcomes if o]
    RESULTS[bug] = (len(flagged) == len(outcomes), flagged[0] if flagged else None)
    assert len(flagged) == len(outcomes), (
        f"{bug}: {len(outcomes) - len(flagged)} of {len(outcomes)} changed outputs not flagged")
    for o in flagged:
        assert o["cause"] == "implementation" and o["backend"] == "jittor", o
        assert o["where"] == where, o


def test_kill_rate_summary():
    """Runs last in this file: the kill rate over the bugs planted above."""
    if not RESULTS:
        pytest.skip("no planted bug ran")
    killed = sum(k for k, _ in RESULTS.values())
    lines = [f"planted bugs killed: {killed}/{len(RESULTS)}"]
    lines += [f"  {'KILLED' if k else 'SURVIVED'}  {bug}: {where}" for bug, (k, where) in RESULTS.items()]
    print("\n".join(lines))
    folder = os.environ.get("ALIGNMENT_REPORT_DIR")
    if folder:
        write_json(os.path.join(folder, "planted_bugs.json"),
                   {"killed": killed, "planted": len(RESULTS),
                    "bugs": {b: {"killed": bool(k), "localized": w} for b, (k, w) in RESULTS.items()}})
    assert killed == len(RESULTS)
