"""The PEFT methods beside LoRA (--peft, shared/model/peft_methods.py, */peft_modules.py) agree
across the twins: logits, loss, the gradients of every trainable parameter, 16 steps of the real
training loop, and beam search; and the virtual positions work as peft's do for causal LMs.

Tolerances are those of the LoRA suite (test_grad.py, test_train_alignment.py): gradients
atol = 1e-4 x their largest |value|, rtol 1e-3; loss 1e-5; training loss per step rel 1e-5,
final trained weights abs 1e-5. Adapters start as the identity (up projection 0), which hides
their path and sends no gradient to the down projection: the checks draw it non-zero.
"""
import json
import os
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import torch

from alignment.harness import (build_jittor, build_torch, compare, jittor_forward, jittor_grads,
                               jittor_on, tiny_config, torch_forward, torch_grads)
from alignment.test_grad import GRAD_RTOL, GRAD_SCALE_TOL, LABEL_SMOOTH, LOSS_ATOL, LOSS_RTOL, batch
from backends import training_backend as backend_class
from shared.decode.beam_spec import BeamSettings
from shared.model.checkpoint import read_checkpoint
from shared.model.params import init_state_dict, trainable_names
from shared.model.peft_methods import PeftSettings
from shared.train.train_args import build_parser
from shared.train.trainer import train

CASES = {
    "top2": PeftSettings("top2"),
    "bitfit": PeftSettings("bitfit"),
    "adapter": PeftSettings("adapter", adapter_dim=8),
    "prompt": PeftSettings("prompt", num_virtual_tokens=5),
    "ptuning-mlp": PeftSettings("ptuning", num_virtual_tokens=5, encoder_hidden_size=24),
    "ptuning-lstm": PeftSettings("ptuning", num_virtual_tokens=4, ptuning_encoder="lstm",
                                 encoder_hidden_size=12),
    "prefix": PeftSettings("prefix", num_virtual_tokens=5),
    "prefix-projection": PeftSettings("prefix", num_virtual_tokens=5, prefix_projection=24),
}
CASE_FLAGS = {
    "top2": ["--peft", "top2"], "bitfit": ["--peft", "bitfit"],
    "adapter": ["--peft", "adapter", "--adapter_dim", "8"],
    "prompt": ["--peft", "prompt", "--num_virtual_tokens", "5"],
    "ptuning-mlp": ["--peft", "ptuning", "--num_virtual_tokens", "5", "--encoder_hidden_size", "24"],
    "ptuning-lstm": ["--peft", "ptuning", "--num_virtual_tokens", "4", "--ptuning_encoder", "lstm",
                     "--encoder_hidden_size", "12"],
    "prefix": ["--peft", "prefix", "--num_virtual_tokens", "5"],
    "prefix-projection": ["--peft", "prefix", "--num_virtual_tokens", "5", "--prefix_projection", "24"],
}
TRAIN_LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


def case_state(config, seed=11):
    """Seeded weights with every adapter's up projection drawn non-zero (see the docstring)."""
    state = OrderedDict(init_state_dict(config, seed))
    for name in (n for n in state if ".adapter_" in n and ".up." in n):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        state[name] = rng.normal(0.0, 0.05, size=state[name].shape).astype(np.float32)
    return state


def marked(model, config, module):
    trained = set(trainable_names(config, [n for n, _ in model.named_parameters()]))
    module.mark_trainable(model, lambda name: name in trained)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_logits_loss_and_gradients_agree(case):
    from jittor_impl import lora as jittor_lora
    from torch_impl import lora as torch_lora
    config = tiny_config(peft=CASES[case])
    state = case_state(config)
    ids, labels, mask = batch()
    names = trainable_names(config, list(state))
    t_model = marked(build_torch(config, state, attention="math").train(), config, torch_lora)
    t_loss, t_grads, t_logits = torch_grads(t_model, ids, labels, mask, LABEL_SMOOTH, logits=True)
    assert t_logits.shape[:2] == ids.shape  # no logits for the virtual positions
    with jittor_on("cpu"):
        j_model = marked(build_jittor(config, state).train(), config, jittor_lora)
        j_loss, j_grads, j_logits = jittor_grads(j_model, ids, labels, mask, LABEL_SMOOTH,
                                                 logits=True)
    assert sorted(j_grads) == sorted(names)
    assert all(t_grads[n] is None for n in state if n not in names)  # the rest stays frozen
    compare(f"peft/{case}/logits", j_logits, t_logits, 1e-5, 1e-4)
    compare(f"peft/{case}/loss", j_loss, t_loss, LOSS_ATOL, LOSS_RTOL)
    for name in names:
        assert t_grads[name] is not None and np.abs(t_grads[name]).max() > 0, name
        atol = GRAD_SCALE_TOL * float(np.abs(t_grads[name]).max())
        compare(f"peft/{case}/grad/{name}", j_grads[name], t_grads[name], atol, GRAD_RTOL)


@pytest.mark.parametrize("case", ["prompt", "ptuning-lstm", "prefix"])
def test_virtual_positions_are_not_scored_and_the_cache_holds_them_first(case):
    """The loss is the masked mean over the real positions only (as peft's -100 labels on the
    virtual ones); decoding token by token from the cache the first pass left gives the logits
    of one whole pass (prefix keys sit in the cache before the query, positions continue)."""
    config = tiny_config(peft=CASES[case])
    model = build_torch(config, case_state(config), attention="math")
    ids, labels, mask = batch()
    logits, loss = torch_forward(model, ids, labels=labels, mask=mask)
    token_loss = -np.take_along_axis(torch.log_softmax(torch.from_numpy(logits), -1).numpy(),
                                     labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, (token_loss * mask).sum() / (mask.sum() + 1e-4), rtol=1e-5)
    whole, _ = torch_forward(model, ids)
    with torch.no_grad():
        first, past = model(torch.from_numpy(ids[:, :4]))
        n = CASES[case].num_virtual_tokens
        assert past[0][0].shape[2] == n + 4
        steps = [first]
        for t in range(4, ids.shape[1]):
            out, past = model(torch.from_numpy(ids[:, t:t + 1]), past=past)
            steps.append(out)
    np.testing.assert_allclose(torch.cat(steps, 1).numpy(), whole, atol=2e-5, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_beams_are_identical(case):
    """Both twins, both caches, and a greedy search by whole forward passes: the same tokens."""
    from jittor_impl.beam import beam_search as jittor_beam
    from torch_impl.beam import beam_search as torch_beam
    config = tiny_config(peft=CASES[case], initializer_range=0.3)
    state = case_state(config)
    rng = np.random.default_rng(3)
    query, query_len = rng.integers(0, 50257, size=(2, 9)), np.array([9, 6])
    t_model = build_torch(config, state, attention="math")
    settings = BeamSettings(beam=3, eval_len=8, no_repeat_ngram_size=0, eos_token_ids=(50256,))
    per_row = torch_beam(t_model, query, query_len, settings).numpy()
    shared = torch_beam(t_model, query, query_len, settings, cache="shared_prefix").numpy()
    with jittor_on("cpu"):
        j_beams = jittor_beam(build_jittor(config, state), query, query_len, settings).numpy()
    np.testing.assert_array_equal(shared, per_row)
    np.testing.assert_array_equal(j_beams, per_row)
    greedy = torch_beam(t_model, query, query_len, BeamSettings(
        beam=1, eval_len=8, no_repeat_ngram_size=0, eos_token_ids=(50256,))).numpy()
    for row in range(2):
        seq = list(query[row, :query_len[row]])
        for step in range(8):
            with torch.no_grad():
                token = int(t_model(torch.tensor([seq]))[0][0, -1].argmax())
            assert greedy[row, step] == token, (row, step)
            seq.append(token)


def run(encoded, work_dir, backend, case):
    argv = ["--backend", backend, "--device", "cpu",
            "--train_data", str(encoded / "train.jsonl"), "--valid_data", str(encoded / "valid.jsonl"),
            "--n_embd", "32", "--n_layer", "2", "--n_head", "2",
            "--train_batch_size", "2", "--valid_batch_size", "4", "--seq_len", "48",
            "--max_step", "16", "--warmup_step", "4", "--lr", "0.01", "--weight_decay", "0.01",
            "--correct_bias", "--clip", "1.0", "--log_interval", "4", "--eval_interval", "16",
            "--save_interval", "8", "--max_eval_batches", "1", "--random_seed", "3",
            "--work_dir", str(work_dir), "--no_progress", "--attn", "math", *CASE_FLAGS[case]]
    summary = train(build_parser().parse_args(argv), backend_class(backend))
    with open(os.path.join(work_dir, "train_log.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]
    return summary, np.array(losses)


@pytest.mark.parametrize("case", list(CASES))
def test_sixteen_training_steps_agree(tmp_path, encoded, case):
    (t_summary, t_loss), (j_summary, j_loss) = (run(encoded, tmp_path / b, b, case)
                                                for b in ("torch", "jittor"))
    assert len(t_loss) == len(j_loss) == 16
    rel = np.abs(t_loss - j_loss) / np.abs(t_loss)
    assert rel.max() <= TRAIN_LOSS_RTOL, f"{case}: loss curves differ, max rel {rel.max():.3g}"
    assert t_summary["trainable_params"] == j_summary["trainable_params"]
    step8 = {b: read_checkpoint(tmp_path / b / "model.8.pt") for b in ("torch", "jittor")}
    assert sorted(step8["torch"]) == sorted(step8["jittor"])
    final = {b: read_checkpoint(s["final_checkpoint"])
             for b, s in (("torch", t_summary), ("jittor", j_summary))}
    for name in step8["torch"]:  # the trained weights, still moving after step 8
        assert not np.array_equal(step8["torch"][name], final["torch"][name]), name
        worst = float(np.abs(final["torch"][name] - final["jittor"][name]).max())
        assert worst <= WEIGHT_ATOL, f"{case}: {name} differs by {worst:.3g}"


# ------------------------------------------------------------------------- planted method bugs
def prefix_positions_off_by_one(body, inputs_embeds, past, len_past):
    """with_virtual_tokens with the decode position one short of the N virtual ones."""
    embeds, past, moved, stripped = REAL_WITH_VIRTUAL(body, inputs_embeds, past, len_past)
    return embeds, past, (None if moved is None else moved - 1), stripped


def virtual_token_scored(body, inputs_embeds, past, len_past):
    """The outputs kept one position early: the last virtual token is scored, the last real not."""
    embeds, past, moved, stripped = REAL_WITH_VIRTUAL(body, inputs_embeds, past, len_past)
    if stripped:
        embeds = embeds[:, :-1]
        stripped -= 1
    return embeds, past, moved, stripped


def adapter_without_residual(self, x):
    import jittor_impl.peft_modules as pm
    return self.up(pm.gelu(self.down(x)))  # missing: x +


def _real_with_virtual():
    import jittor_impl.peft_modules as pm
    return pm.with_virtual_tokens


REAL_WITH_VIRTUAL = None
METHOD_BUGS = {  # name: (case, what to patch in the Jittor twin, its replacement)
    "prefix positions off by one": ("prefix", "jittor_impl.model.with_virtual_tokens",
                                    prefix_positions_off_by_one),
    "virtual token scored": ("prompt", "jittor_impl.model.with_virtual_tokens",
                             virtual_token_scored),
    "adapter residual missing": ("adapter", "jittor_impl.peft_modules.Adapter.execute",
                                 adapter_without_residual),
}


def twins_disagree(case):
    """Which of the checks above see the twins part: logits/loss, or the beams."""
    from jittor_impl.beam import beam_search as jittor_beam
    from torch_impl.beam import beam_search as torch_beam
    config = tiny_config(peft=CASES[case], initializer_range=0.3)
    state = case_state(config)
    ids, labels, mask = batch()
    t_logits, t_loss = torch_forward(build_torch(config, state, attention="math"), ids,
                                     labels=labels, mask=mask)
    query, query_len = np.random.default_rng(3).integers(0, 50257, size=(2, 9)), np.array([9, 6])
    settings = BeamSettings(beam=3, eval_len=8, no_repeat_ngram_size=0, eos_token_ids=(50256,))
    t_beams = torch_beam(build_torch(config, state, attention="math"), query, query_len, settings)
    with jittor_on("cpu"):
        j_model = build_jittor(config, state)
        try:
            j_logits, j_loss = jittor_forward(j_model, ids, labels, mask)
            forward = (j_logits.shape != t_logits.shape
                       or not np.allclose(j_logits, t_logits, rtol=1e-4,
                                          atol=1e-5 * float(np.abs(t_logits).max()))
                       or not np.isclose(j_loss, t_loss, atol=LOSS_ATOL, rtol=LOSS_RTOL))
        except Exception:  # noqa: BLE001 - a planted bug may also break the shapes
            forward = True
        beams = not np.array_equal(jittor_beam(j_model, query, query_len, settings).numpy(),
                                   t_beams.numpy())
    return {"forward": forward, "beams": beams}


@pytest.mark.parametrize("bug", list(METHOD_BUGS))
def test_planted_method_bugs_are_caught(monkeypatch, bug):
    global REAL_WITH_VIRTUAL
    REAL_WITH_VIRTUAL = _real_with_virtual()
    case, target, replacement = METHOD_BUGS[bug]
    assert twins_disagree(case) == {"forward": False, "beams": False}
    monkeypatch.setattr(target, replacement)
    caught = twins_disagree(case)
    print(f"planted method bug {bug!r}: caught by {[k for k, v in caught.items() if v]}")
    assert any(caught.values()), f"{bug}: neither the forward check nor the beams see it"
