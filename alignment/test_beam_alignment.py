"""Beam search on device (torch_impl/beam.py, jittor_impl/beam.py) against the numpy spec
(shared/decode/beam_spec.py) and against each other, on a tiny model trained on E2E in the test.

- the vectorised rules (top-k with its tie order, n-gram bans, penalties) equal the spec's
  per-row helpers on random inputs full of ties;
- each backend's beam search equals the numpy reference driven by that backend's full forward;
- torch and jittor give identical outputs at batch sizes 1, 3 and 8, and neither depends on
  the batch size;
- scripts/gpt2_beam.py writes byte-identical files with either backend (and cache);
- the shared-prefix cache gives the per-row cache's outputs.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alignment.tiny_e2e_model import SEQ_LEN, encoded_split, tiny_config, trained_state
from shared.text.batching import FTDataset
from shared.decode.beam_spec import (BeamSettings, BestCandidate, banned_ngram_tokens,
                                     beam_search_reference, postprocess_logits, top_k_order)
from shared.model.checkpoint import save_checkpoint
from shared.model.params import is_lora_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_LEN = 20
TEST_STRIDE = 600  # 8 test lines, 8 different MRs
SETTINGS = {
    "greedy": BeamSettings(beam=1, eval_len=EVAL_LEN),
    "beam4-rules": BeamSettings(beam=4, eval_len=EVAL_LEN, min_length=5, no_repeat_ngram_size=4,
                                repetition_penalty=1.3, eos_token_ids=(50256, 628)),
    "beam10": BeamSettings(beam=10, eval_len=EVAL_LEN, length_penalty=0.8,
                           no_repeat_ngram_size=4, eos_token_ids=(50256, 628)),
}
BACKENDS = ["torch", "jittor"]


# -------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def state(vocab_dir, e2e_dir):
    return trained_state(vocab_dir, e2e_dir)


@pytest.fixture(scope="module")
def contexts(vocab_dir, e2e_dir):
    return [list(c) for c, _ in encoded_split(vocab_dir, e2e_dir, "test", TEST_STRIDE)]


class Twin:
    """One backend's model with its beam search and a last-position full forward."""

    def __init__(self, backend, state, device="cpu"):
        self.backend = backend
        if backend == "torch":
            from torch_impl import beam
            from torch_impl.model import GPT2LMModel
            self.model = GPT2LMModel(tiny_config()).to(device)
        else:
            from jittor_impl import beam, runtime
            from jittor_impl.model import GPT2LMModel
            runtime.use_device(device)
            self.model = GPT2LMModel(tiny_config())
        self.beam = beam
        self.model.load_state_numpy(state)
        self.model.eval()

    def search(self, query, query_len, settings, cache="per_row"):
        out = self.beam.beam_search(self.model, query, query_len, settings, cache=cache)
        return out.cpu().numpy() if self.backend == "torch" else out.numpy()

    def search_batched(self, contexts, settings, batch_size, cache="per_row"):
        """Outputs in query order, searched `batch_size` queries at a time."""
        dataset = FTDataset([(c, [0]) for c in contexts], batch_size, SEQ_LEN, settings.eval_len)
        return np.concatenate([self.search(b["query"], b["query_len"], settings, cache)
                               for b in dataset.query_batches(batch_size)])

    def next_logits(self, prefixes):
        """The model's full forward (no cache) over each prefix; logits after its last token."""
        width = max(len(p) for p in prefixes)
        ids = np.zeros((len(prefixes), width), dtype=np.int64)
        for row, prefix in enumerate(prefixes):
            ids[row, :len(prefix)] = prefix
        last = np.array([len(p) - 1 for p in prefixes])
        if self.backend == "torch":
            import torch
            device = next(self.model.parameters()).device
            with torch.no_grad():
                logits, _ = self.model(torch.from_numpy(ids).to(device))
                return logits[torch.arange(len(prefixes)), torch.from_numpy(last)].cpu().numpy()
        from jittor_impl.runtime import jt
        with jt.no_grad():
            hidden, _ = self.model.transformer(jt.array(ids))  # the head on last positions only
            hidden = hidden[jt.arange(len(prefixes)), jt.array(last)]
            return jt.matmul(hidden, self.model.transformer.wte.weight.transpose()).numpy()


@pytest.fixture(scope="module")
def twins(state):
    return {backend: Twin(backend, state) for backend in BACKENDS}


def backend_module(backend):
    """(beam module, numpy -> backend array)."""
    if backend == "torch":
        import torch
        from torch_impl import beam
        return beam, lambda x: torch.from_numpy(np.ascontiguousarray(x))
    from jittor_impl import beam
    from jittor_impl.runtime import jt
    return beam, lambda x: jt.array(np.ascontiguousarray(x))


def _numpy(x):
    return x.numpy()  # a CPU torch tensor or a jittor Var


# ------------------------------------------------------------------ vectorised rules vs spec
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width", [7, 3000])  # one block, and the blocked path over 3 blocks
def test_select_top_k_matches_the_spec_order(backend, width):
    beam, array = backend_module(backend)
    rng = np.random.default_rng(width)
    scores = rng.choice(np.array([-np.inf, -2.5, -1.0, 0.0, 0.5], np.float32), size=(6, width))
    scores[0] = -np.inf  # all tied
    scores[1, -3:] = 1.0  # the best entries at the end of the last (padded) block
    for k in (1, 4, 7):
        values, index = beam.select_top_k(array(scores), k)
        expected = np.stack([top_k_order(row, k) for row in scores])
        np.testing.assert_array_equal(_numpy(index), expected)
        np.testing.assert_array_equal(_numpy(values), np.take_along_axis(scores, expected, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_postprocess_scores_match_the_spec_rules(backend):
    beam, array = backend_module(backend)
    rng = np.random.default_rng(0)
    vocab, eval_len = 6, 9
    history = rng.integers(0, 3, size=(5, eval_len))  # few distinct tokens: many repeats
    logits = rng.normal(size=(5, vocab)).astype(np.float32)
    for n in (1, 2, 3):
        settings = BeamSettings(beam=2, eval_len=eval_len, min_length=3, no_repeat_ngram_size=n,
                                repetition_penalty=1.7, eos_token_ids=(5, 1))
        eos_columns = np.isin(np.arange(vocab), settings.eos_token_ids)
        for cur_len in range(eval_len):
            # columns >= cur_len hold other tokens here: the rules must ignore them
            got = _numpy(beam.postprocess_scores(array(logits), array(history), cur_len,
                                                 settings, array(eos_columns)))
            expected = np.stack([postprocess_logits(row, h[:cur_len].tolist(), settings)
                                 for row, h in zip(logits, history)])
            np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"n={n} t={cur_len}")
            banned = _numpy(beam.banned_ngram_mask(array(history), cur_len, n, vocab))
            for row, h in enumerate(history):
                assert np.flatnonzero(banned[row]).tolist() == \
                    banned_ngram_tokens(h[:cur_len].tolist(), n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_best_candidates_follow_the_spec_offer_rule(backend):
    beam, array = backend_module(backend)
    rng = np.random.default_rng(1)
    batch, width, eval_len, penalty = 4, 3, 6, 0.5
    device_best = (beam.BestCandidates(batch, eval_len, penalty, "cpu") if backend == "torch"
                   else beam.BestCandidates(batch, eval_len, penalty))
    spec_best = [BestCandidate(eval_len, penalty) for _ in range(batch)]
    for length in range(1, eval_len + 1):  # equal scores across rows and steps: ties to break
        scores = rng.choice(np.array([-np.inf, -4.0, -2.0, -1.0], np.float32), (batch, width))
        scores *= np.float32(length ** penalty)  # the same normalised score at every length
        finished = rng.random((batch, width)) < 0.5
        history = rng.integers(1, 50, size=(batch * width, eval_len))
        history[:, length:] = 0
        left = _numpy(device_best.offer(array(scores), array(history), length, array(finished)))
        for b in range(batch):
            for k in np.flatnonzero(finished[b]):
                spec_best[b].offer(scores[b, k], history[b * width + k, :length].tolist())
        np.testing.assert_array_equal(left, np.where(finished, -np.inf, scores))
        np.testing.assert_array_equal(_numpy(device_best.sequence),
                                      np.stack([s.sequence for s in spec_best]))


# ------------------------------------------------------------------------ search vs spec
@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_device_beam_search_equals_the_reference(twins, contexts, backend, name):
    settings, twin = SETTINGS[name], twins[backend]
    chosen = contexts[:3]
    expected = beam_search_reference(twin.next_logits, chosen, settings)
    got = twin.search_batched(chosen, settings, batch_size=3)
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------- torch vs jittor
@pytest.mark.parametrize("name", list(SETTINGS))
def test_backends_agree_at_every_batch_size(twins, contexts, name):
    settings = SETTINGS[name]
    outputs = {(backend, size): twins[backend].search_batched(contexts, settings, size)
               for backend in BACKENDS for size in (1, 3, 8)}
    first = outputs[("torch", 8)]
    for key, out in outputs.items():
        np.testing.assert_array_equal(out, first, err_msg=f"{key} differs from torch at 8")
    finished = np.isin(first, settings.eos_token_ids).any(axis=1)
    assert finished.any(), "no query reached an eos: the test would not cover finishing"
    assert len({tuple(row) for row in first}) > 1, "every query got the same output"


# ------------------------------------------------------- the shared-prefix cache switch
@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_prefix_cache_gives_the_exact_paths_outputs(twins, contexts, backend, name):
    """The fast cache (its attention sums in another order) against the per-row cache, with
    queries of different lengths in one batch and beams that finish."""
    settings, twin = SETTINGS[name], twins[backend]
    exact = twin.search_batched(contexts, settings, 8)
    np.testing.assert_array_equal(twin.search_batched(contexts, settings, 8, "shared_prefix"), exact)
    np.testing.assert_array_equal(twin.search_batched(contexts[:3], settings, 3, "shared_prefix"),
                                  exact[:3])


# ---------------------------------------------------------------------------- the script
def test_gpt2_beam_script_writes_the_same_file_with_both_backends(tmp_path, state, contexts,
                                                                 twins):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"context": c, "completion": [50256]}) + "\n"
                            for c in contexts[:5]))
    save_checkpoint(tmp_path / "base.safetensors",
                    {k: v for k, v in state.items() if not is_lora_name(k)})
    save_checkpoint(tmp_path / "lora.pt", {k: v for k, v in state.items() if is_lora_name(k)})
    config = tiny_config()
    settings = BeamSettings(beam=4, eval_len=20, length_penalty=0.8,
                            eos_token_ids=(50256, 628))
    files = {}
    for backend, cache in [(b, "per_row") for b in BACKENDS] + [("torch", "shared_prefix")]:
        argv = [sys.executable, os.path.join(ROOT, "scripts", "gpt2_beam.py"),
                "--backend", backend, "--cache", cache, "--device", "cpu", "--data", str(data),
                "--batch_size", "2", "--seq_len", str(SEQ_LEN), "--eval_len", "20",
                "--n_embd", str(config.n_embd), "--n_layer", str(config.n_layer),
                "--n_head", str(config.n_head), "--lora_dim", str(config.lora_attn_dim),
                "--lora_alpha", str(config.lora_attn_alpha),
                "--init_checkpoint", str(tmp_path / "base.safetensors"),
                "--lora_checkpoint", str(tmp_path / "lora.pt"),
                "--beam", "4", "--length_penalty", "0.8", "--eos_token_id", "628",
                "--work_dir", str(tmp_path / backend / cache), "--output_file", "predict.jsonl",
                "--no_progress"]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "time taken" in proc.stdout
        files[backend, cache] = (tmp_path / backend / cache / "predict.jsonl").read_text()
    assert files["torch", "per_row"] == files["jittor", "per_row"] == files["torch", "shared_prefix"]
    records = [json.loads(line) for line in files["torch", "per_row"].splitlines()]
    assert [r["id"] for r in records] == list(range(5))
    expected = twins["torch"].search_batched(contexts[:5], settings, batch_size=5)
    assert [r["predict"] for r in records] == expected.tolist()


# ------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SETTINGS))
def test_backends_agree_on_cuda(state, contexts, twins, name):
    from jittor_impl import runtime
    settings = SETTINGS[name]
    try:
        on_gpu = {backend: Twin(backend, state, device="cuda") for backend in BACKENDS}
        outputs = {backend: on_gpu[backend].search_batched(contexts, settings, 3)
                   for backend in BACKENDS}
    finally:
        runtime.use_device("cpu")
    np.testing.assert_array_equal(outputs["jittor"], outputs["torch"])
    np.testing.assert_array_equal(outputs["torch"],
                                  twins["torch"].search_batched(contexts, settings, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SETTINGS))
def test_shared_prefix_cache_on_cuda(state, contexts, twins, name):
    from jittor_impl import runtime
    settings = SETTINGS[name]
    try:
        on_gpu = {backend: Twin(backend, state, device="cuda") for backend in BACKENDS}
        outputs = {backend: on_gpu[backend].search_batched(contexts, settings, 8, "shared_prefix")
                   for backend in BACKENDS}
    finally:
        runtime.use_device("cpu")
    expected = twins["torch"].search_batched(contexts, settings, 8)
    for backend in BACKENDS:
        np.testing.assert_array_equal(outputs[backend], expected, err_msg=backend)
