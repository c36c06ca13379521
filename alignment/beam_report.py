"""scripts/beam_divergence.py's work: for each query whose beam outputs differ between the two
backends' runs (their prediction files), where and why the searches part
(alignment.divergence_step: the first parting step, the two competing tokens, the score margin),
written as OUT/beam_divergence.json and work.sh's report section.

Each backend's search is re-traced with that backend's own checkpoint (the two runs trained
their own weights), so a difference in the weights shows as a "logits" cause; a margin below
beam_divergence.TIE_TOL is a near-tie that rounding decides. Re-tracing costs eval_len full
forwards per query and backend, so at most `max_queries` differing queries are analysed (the
first ones in file order) and the report says how many."""
from __future__ import annotations

import json
import os
from argparse import Namespace

import numpy as np

from shared.runtime.atomic import write_json, write_text
from shared.text.batching import FTDataset

from alignment.divergence_step import beam_divergence, next_logits_fn, summarize
from .report_sections import beam_divergence_section

BACKENDS = ("torch", "jittor")


def read_predictions(path: str) -> dict:
    """{query id: predicted token ids} of a gpt2_beam.py prediction file."""
    out = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                out[int(row["id"])] = [int(t) for t in row["predict"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a prediction line ({exc})") from None
    return out


def load_model(backend: str, checkpoint: str, model_args: Namespace):
    """The backend's model with `checkpoint` loaded, in eval mode (backends.load_inference_model)."""
    from backends import load_inference_model
    args = Namespace(**vars(model_args), backend=backend, init_checkpoint=checkpoint,
                     lora_checkpoint=None)
    return load_inference_model(args).model


def from_runs(model_args: Namespace, checkpoints: dict, predictions: dict, data: str, settings,
              seq_len: int, out_dir: str, max_queries: int = 20) -> dict:
    """`checkpoints`/`predictions`: {backend: path}. `model_args`: the shape flags, lora_dim,
    lora_alpha and device. Returns the JSON document (also written)."""
    if max_queries < 0:
        raise ValueError(f"--max_queries must be >= 0, got {max_queries}")
    preds = {b: read_predictions(predictions[b]) for b in BACKENDS}
    if set(preds["torch"]) != set(preds["jittor"]):
        raise ValueError(f"{predictions['torch']} and {predictions['jittor']} hold different queries")
    ids = sorted(preds["torch"])
    differing = [i for i in ids if preds["torch"][i] != preds["jittor"][i]]
    chosen = differing[:max_queries]
    divergences = []
    if chosen:
        dataset = FTDataset.from_file(data, 1, seq_len, settings.eval_len)
        width = seq_len - settings.eval_len  # gpt2_beam.py cuts queries to their last tokens
        fns = {b: next_logits_fn(b, load_model(b, checkpoints[b], model_args)) for b in BACKENDS}
        for i in chosen:
            query = dataset.samples[i][0][-width:]
            found = beam_divergence(query, fns["torch"], fns["jittor"], settings,
                                    np.array(preds["torch"][i]), np.array(preds["jittor"][i]))
            divergences.append(dict(found, query_id=i) if found else
                               {"query_id": i, "cause": "no parting found on re-trace"})
    document = {"queries": len(ids), "differing": len(differing), "analysed": len(chosen),
                "max_queries": max_queries, "summary": summarize(divergences),
                "divergences": divergences, "checkpoints": checkpoints, "predictions": predictions}
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "beam_divergence.json"), document)
    write_text(os.path.join(out_dir, "report_section.md"), report_section(document))
    return document


def report_section(document: dict) -> str:
    """beam_divergence_section over the analysed queries, counting all of them."""
    return beam_divergence_section(document["divergences"],
                                   ids=[d["query_id"] for d in document["divergences"]],
                                   queries=document["queries"], differing=document["differing"])
