"""Scoring an instruction-tuned model on a held-out split: generated responses and perplexity.

Backend-neutral: responses come from an `inference_model.InferenceModel` (its backend's KV-cache
sampler, draws in numpy from `shared/decode/sampling.py`, so both backends write the same text for the
same weights and seed); the perplexity from a training backend's `eval_loss`. ROUGE-L is the
project's E2E ROUGE-L (`metrics.coco`: PTB tokenisation, pycocoevalcap's Rouge, beta 1.2) with
one reference per entry.

Perplexity is exp of the mean loss per scored token over the whole split: each batch's
mask-weighted mean loss is weighted by its mask sum again, and batches are sequential without
the evaluation fill, so every token counts once whatever the batch size.
"""
from __future__ import annotations

import math

import numpy as np

from shared.text.instruct_data import format_prompt
from shared.decode.sampling import SamplingSettings


def generate_responses(model, entries: list, tokenizer, settings: SamplingSettings, seed: int,
                       on_entry=None) -> list:
    """One response per entry (sample seed `seed + entry id`); prompts longer than the context
    window leave room for the response by keeping their last tokens."""
    n_positions = model.model.config.n_positions
    responses = []
    for entry in entries:
        prompt = tokenizer.encode(format_prompt(entry))
        room = n_positions - settings.max_new_tokens + 1
        tokens = model.sample(prompt[-room:], settings, seed + int(entry.get("id", 0)), 1)[0]
        responses.append(tokenizer.decode(tokens).strip())
        if on_entry is not None:
            on_entry(len(responses))
    return responses


def response_perplexity(backend, dataset, batch_size: int) -> dict:
    """{'loss', 'ppl', 'tokens'} of `backend` on every example of `dataset` (an FTDataset)."""
    losses, weights = [], []
    for start in range(0, dataset.num_examples, batch_size):
        batch = dataset.collate(list(range(start, min(start + batch_size, dataset.num_examples))))
        losses.append(backend.eval_loss(batch))
        weights.append(float(batch["mask"].sum()))
    values = np.asarray(backend.fetch(losses), dtype=np.float64)
    weights = np.asarray(weights)
    # the model divides by (mask sum + 1e-4); undo it exactly before weighting
    total = float(np.sum(values * (weights + 1e-4)))
    loss = total / float(weights.sum())
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": int(weights.sum())}


def rouge_l(references: list, responses: list) -> float:
    """Corpus ROUGE-L (mean of per-entry F-scores), as the E2E scorer computes it."""
    from shared.metrics.coco import coco_scores
    return coco_scores([[r] for r in references], responses, meteor=False)["ROUGE_L"]
