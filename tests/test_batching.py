"""shared/text/batching.py against a literal transcription of microsoft/LoRA's FT_Dataset."""
import random

import numpy as np
import pytest

from shared.text.batching import FTDataset, padding_tokens
from shared.text.e2e_data import prepare_e2e, read_encoded

SEQ_LEN, EVAL_LEN, BS, SEED = 64, 32, 8, 110  # truncates many E2E examples both ways


# ------------------------------------------------------------ the reference, transcribed
def ref_padding_tokens(tokens, max_seq_length, pad_token, direct, max_context_length=0):
    if max_context_length == 0:
        max_context_length = max_seq_length
    if len(tokens) > max_context_length:
        if direct > 0:
            pad_tokens = tokens[:max_context_length]
        else:
            pad_tokens = tokens[-max_context_length:]
    else:
        pad_tokens = tokens
    token_len = len(pad_tokens)
    pad_tokens = pad_tokens + [pad_token for _ in range(max_seq_length - token_len)]
    return pad_tokens, token_len


class RefFTDataset:
    """examples/NLG/src/data_utils.py FT_Dataset (joint_lm=False, no prefix/infix), lists
    instead of torch tensors."""

    def __init__(self, ft_samples, batch_size, max_seq_length, max_eval_length=0):
        self.ft_samples = ft_samples
        self.batch_size = batch_size
        self.num_examples = len(self.ft_samples)
        self.max_seq_length = max_seq_length
        self.max_eval_length = max_eval_length
        self.rng = random.Random(911)
        self.num_batches = int((self.num_examples + self.batch_size - 1) / self.batch_size)

    def __len__(self):
        return self.num_batches * self.batch_size

    def __getitem__(self, item):
        if item >= self.num_examples:
            item = self.rng.randint(0, self.num_examples - 1)
        example = self.ft_samples[item]
        context = example[0]
        completion = example[1]
        conditions = context
        _input, _input_len = ref_padding_tokens(conditions + completion, self.max_seq_length, 0, 1)
        pad_targets = context + completion
        _target, _ = ref_padding_tokens(pad_targets[1:], self.max_seq_length, 0, 1)
        _msk = [0.0] * (len(conditions) - 1) + [1.0] * (_input_len - len(conditions))
        _msk, _ = ref_padding_tokens(_msk, self.max_seq_length, 0.0, 1)
        _query, _query_len = ref_padding_tokens(
            conditions, self.max_seq_length - self.max_eval_length, 0, -1)
        return {"id": item, "query": _query, "query_len": _query_len, "input": _input,
                "target": _target, "mask": _msk}


def ref_collate(items):
    return {k: np.array([it[k] for it in items],
                        dtype=np.float32 if k == "mask" else np.int64) for k in items[0]}


def assert_batches_equal(ours, ref):
    assert ours.keys() == ref.keys()
    for key in ref:
        assert ours[key].dtype == ref[key].dtype, key
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def valid_jsonl(vocab_dir, e2e_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    prepare_e2e(e2e_dir, out, vocab_dir=vocab_dir, splits=("valid",))
    return out / "valid.jsonl"


@pytest.fixture(scope="module")
def samples(valid_jsonl):
    return read_encoded(valid_jsonl)


def make(samples, **kw):
    args = dict(batch_size=BS, seq_len=SEQ_LEN, eval_len=EVAL_LEN)
    args.update(kw)
    return FTDataset(samples, **args)


# ------------------------------------------------------------------------------- semantics
def test_padding_tokens_matches_reference():
    for tokens in ([], [1], [1, 2, 3], list(range(10))):
        for length in (1, 3, 10, 12):
            for direct in (1, -1):
                assert padding_tokens(tokens, length, 0, direct) == \
                    ref_padding_tokens(tokens, length, 0, direct)
    assert padding_tokens([1, 2, 3, 4], 2, 0, 1) == ([1, 2], 2)
    assert padding_tokens([1, 2, 3, 4], 2, 0, -1) == ([3, 4], 2)


def test_example_by_hand():
    ds = FTDataset([([1, 2, 3], [4, 5])], batch_size=1, seq_len=8, eval_len=6)
    ex = ds.example(0)
    assert ex["input"] == [1, 2, 3, 4, 5, 0, 0, 0]
    assert ex["target"] == [2, 3, 4, 5, 0, 0, 0, 0]
    assert ex["mask"] == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert (ex["query"], ex["query_len"]) == ([2, 3], 2)  # context cut from the left


def test_eval_batches_equal_reference_with_fill_and_truncation(samples):
    ds, ref = make(samples), RefFTDataset(samples, BS, SEQ_LEN, EVAL_LEN)
    assert len(ds) == len(ref) > ds.num_examples  # the last batch needs filling
    assert 0 < len(ds.query_truncated) < ds.num_examples
    assert 0 < len(ds.train_truncated) < ds.num_examples
    batches = list(ds.eval_batches(trim=False))
    assert len(batches) == ds.num_batches
    for b, batch in enumerate(batches):
        assert_batches_equal(batch, ref_collate([ref[i] for i in range(b * BS, (b + 1) * BS)]))
    # the same batches on every evaluation (the reference would draw new fills)
    assert_batches_equal(list(ds.eval_batches(trim=False))[-1], batches[-1])


def test_train_order_equals_reference_over_epochs_and_resumes(samples):
    ref = RefFTDataset(samples, BS, SEQ_LEN, EVAL_LEN)
    ref_epochs = {}
    for epoch in (1, 2, 3):  # the reference's rng carries over from epoch to epoch
        perm = np.random.default_rng([SEED, epoch]).permutation(len(ref))
        ref_epochs[epoch] = [ref[int(i)] for i in perm]
    fills = [it["id"] for it in ref_epochs[3]]
    for epoch in (3, 1, 2):  # each epoch on a fresh dataset, out of order: a resumed run
        ds = make(samples)
        assert ds.train_order(epoch, SEED) == [it["id"] for it in ref_epochs[epoch]]
        for b, batch in enumerate(ds.train_batches(epoch, SEED, trim=False)):
            assert_batches_equal(batch, ref_collate(ref_epochs[epoch][b * BS:(b + 1) * BS]))
    assert make(samples).train_order(3, SEED) == fills
    assert make(samples).train_order(3, SEED + 1) != fills


def test_train_batches_start_batch_skips_exactly(samples):
    ds = make(samples)
    full = list(ds.train_batches(2, SEED))
    resumed = list(ds.train_batches(2, SEED, start_batch=37))
    assert len(resumed) == ds.num_batches - 37
    for a, b in zip(full[37:], resumed):
        assert_batches_equal(a, b)
    with pytest.raises(ValueError, match="count from 1"):
        ds.train_order(0, SEED)


def test_trimming_is_a_prefix_of_full_padding(samples):
    ds = make(samples, seq_len=128, eval_len=64)
    for trimmed, full in zip(ds.eval_batches(), ds.eval_batches(trim=False)):
        width = trimmed["input"].shape[1]
        assert width < 128
        for key in ("input", "target", "mask"):
            np.testing.assert_array_equal(trimmed[key], full[key][:, :width])
            assert not full[key][:, width:].any()  # only padding was dropped
        qw = trimmed["query"].shape[1]
        assert qw == full["query_len"].max()
        np.testing.assert_array_equal(trimmed["query"], full["query"][:, :qw])
        assert not full["query"][:, qw:].any()
        np.testing.assert_array_equal(trimmed["id"], full["id"])


def test_query_batches_sequential_last_partial(samples):
    ds = make(samples)
    ref = RefFTDataset(samples, BS, SEQ_LEN, EVAL_LEN)
    batches = list(ds.query_batches(batch_size=100, trim=False))
    assert [len(b["id"]) for b in batches] == [100] * 7 + [ds.num_examples - 700]
    ids = np.concatenate([b["id"] for b in batches])
    np.testing.assert_array_equal(ids, np.arange(ds.num_examples))
    queries = np.concatenate([b["query"] for b in batches])
    np.testing.assert_array_equal(queries, [ref[i]["query"] for i in range(ds.num_examples)])
    assert set(batches[0]) == {"id", "query", "query_len"}


def test_eval_batches_other_batch_size(samples):
    ds = make(samples)
    ref = RefFTDataset(samples, 100, SEQ_LEN, EVAL_LEN)
    last = list(ds.eval_batches(batch_size=100, trim=False))[-1]
    assert_batches_equal(last, ref_collate([ref[i] for i in range(700, 800)]))


# ------------------------------------------------------------------------------ reporting
def test_truncation_report_names_first_offender(valid_jsonl, samples):
    ds = FTDataset.from_file(valid_jsonl, batch_size=BS, seq_len=SEQ_LEN, eval_len=EVAL_LEN)
    first_q = next(i for i, (c, _) in enumerate(samples) if len(c) > SEQ_LEN - EVAL_LEN)
    first_t = next(i for i, (c, t) in enumerate(samples) if len(c) + len(t) > SEQ_LEN)
    report = ds.truncation_report()
    assert f"{len(ds.query_truncated)} of {len(samples)} contexts" in report
    assert f"example {first_q} ({valid_jsonl}:{first_q + 1}" in report
    assert f"example {first_t} ({valid_jsonl}:{first_t + 1}" in report
    assert "lose their beginning" in report and "lose their end" in report
    assert make(samples, seq_len=512, eval_len=64).truncation_report() == ""
    only_train = FTDataset(samples, BS, 64, 0).truncation_report()
    assert "lose their end" in only_train and "beginning" not in only_train
    assert "example" in only_train and ".jsonl" not in only_train  # no file: no file:line


def test_bad_arguments(samples):
    with pytest.raises(ValueError, match="no examples in x.jsonl"):
        FTDataset([], 4, 64, source="x.jsonl")
    with pytest.raises(ValueError, match="batch_size"):
        FTDataset(samples, 0, 64)
    with pytest.raises(ValueError, match="eval_len < seq_len"):
        FTDataset(samples, 4, 64, eval_len=64)
