"""A tiny GPT-2 + LoRA trained for a few seconds on E2E, so decoding tests see real text.

Random weights make beam search degenerate (near-uniform scores, no eos), which hides bugs in
eos handling, n-gram banning and candidate bookkeeping. This model writes E2E-like sentences
of varied lengths, most ending in <|endoftext|>. To train in seconds on 2 CPU cores its loss
uses a softmax over only the tokens the training examples contain (a few hundred instead of
50257); decoding still runs over the full vocabulary, where untrained tokens simply stay
unlikely. Trained once per process (cached); the weights are canonical numpy arrays.
"""
from __future__ import annotations

import functools

import numpy as np

from shared.text.batching import FTDataset
from shared.model.config import GPT2Config
from shared.text.e2e_data import encode_record, read_raw
from shared.text.tokenizer import load_tokenizer

CONFIG = dict(n_embd=64, n_layer=2, n_head=4, lora_attn_dim=4,
              lora_attn_alpha=32)
SEQ_LEN = 128
TRAIN_STRIDE = 10  # every 10th training line: ~400 examples over many MRs
STEPS, BATCH, LR = 300, 16, 1e-2


def tiny_config() -> GPT2Config:
    return GPT2Config(**CONFIG)


@functools.lru_cache(maxsize=None)
def encoded_split(vocab_dir, e2e_dir, split, stride=1) -> tuple:
    """(context ids, completion ids) of every `stride`-th line, encoded as gpt2_encode.py."""
    tokenizer = load_tokenizer(vocab_dir)
    records = read_raw(f"{e2e_dir}/{split}.txt")[::stride]
    return tuple((tuple(e["context"]), tuple(e["completion"]))
                 for e in (encode_record(r, tokenizer) for r in records))


@functools.lru_cache(maxsize=None)
def trained_state(vocab_dir, e2e_dir) -> dict:
    """Canonical weights after STEPS Adam steps (all parameters, LoRA included) from seed 0."""
    import torch

    from torch_impl.model import GPT2LMModel

    samples = encoded_split(vocab_dir, e2e_dir, "train", TRAIN_STRIDE)
    dataset = FTDataset([(list(c), list(t)) for c, t in samples], BATCH, SEQ_LEN)
    used = torch.tensor(sorted({t for c, x in samples for t in c + x}))
    column = torch.full((tiny_config().vocab_size,), -1, dtype=torch.long)
    column[used] = torch.arange(len(used))
    # One thread: tiny ops gain nothing from more, and on a busy 2-core machine two OpenMP
    # threads waiting for each other trained many times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(GPT2LMModel(tiny_config(), seed=0), dataset, used, column)
    finally:
        torch.set_num_threads(threads)


def _train(model, dataset, used, column):
    """Adam on a softmax over the `used` token ids only (`column` maps an id to its place)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    step, epoch = 0, 1
    while step < STEPS:
        for batch in dataset.train_batches(epoch, seed=0):
            hidden, _ = model.transformer(torch.from_numpy(batch["input"]))
            scored = torch.from_numpy(batch["mask"]) > 0
            logits = F.linear(hidden[scored], model.transformer.wte.weight[used])
            loss = F.cross_entropy(logits, column[torch.from_numpy(batch["target"])[scored]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == STEPS:
                break
        epoch += 1
    if not np.isfinite(loss.item()) or loss.item() > 3.0:
        raise RuntimeError(f"tiny E2E model did not train: final loss {loss.item():.3f}")
    return model.state_dict_numpy()

