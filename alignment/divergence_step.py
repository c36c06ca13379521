"""Why two beam searches chose different words: the first step where the hypotheses part, the two
competing tokens and their score margin, told apart from a bug in a beam implementation.

For one query, the spec's search (shared.decode.beam_spec rules, the numpy reference machinery) is run
twice, once on each backend's logits (`next_logits_fn` per backend: the model's full forward),
keeping every step's candidate scores. Then:

- if a backend's own beam output differs from the spec search on its own logits, the beam code
  deviates from the spec ("implementation"); whether its output was among the finished
  hypotheses the spec offered tells a wrong final choice (rule 4: length penalty, offer order)
  from wrong search steps;
- otherwise the two spec searches are compared step by step: at the first step where the kept
  hypotheses differ, the first rank at which they do names the two competing candidates; their
  score margin is read in each backend's scores. A margin below `tie_tol` is a near-tie that
  rounding decides (e.g. 1e-7); a larger one means the logits themselves differ;
- if the steps never part but the outputs do, the final choice differs ("final selection").
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from shared.decode.beam_spec import (NEG_INF, BeamSettings, banned_ngram_tokens, candidate_score,
                                     log_probabilities, postprocess_logits, top_k_order)

TIE_TOL = 1e-5  # log-probability margin below which fp32 rounding of two backends can flip a choice


def traced_search(next_logits_fn: Callable, query: Sequence[int], settings: BeamSettings) -> dict:
    """The spec's search on one query, keeping per step the kept (history, score) rows and the
    flat candidate scores, and every finished hypothesis offered. Same rules as
    shared.decode.beam_spec.beam_search_reference (which it must reproduce; tested)."""
    query = [int(x) for x in query]
    eos = set(settings.eos_token_ids)
    histories, scores = [[]], np.zeros(1, dtype=np.float32)
    steps, offers = [], []
    best_score, best = None, []

    def offer(score, history, step):
        nonlocal best_score, best
        s = candidate_score(score, len(history), settings.length_penalty)
        offers.append({"step": step, "history": list(history), "score": float(s)})
        if best_score is None or s > best_score:
            best_score, best = s, list(history)

    for step in range(settings.eval_len):
        logits = np.asarray(next_logits_fn([query + h for h in histories]), dtype=np.float32)
        vocab = logits.shape[1]
        logprobs = np.stack([log_probabilities(postprocess_logits(row, h, settings))
                             for row, h in zip(logits, histories)])
        flat = (scores[:, None] + logprobs).reshape(-1)
        kept = top_k_order(flat, settings.beam)
        prev = histories
        histories = [prev[i // vocab] + [int(i % vocab)] for i in kept]
        scores = flat[kept].astype(np.float32)
        steps.append({"prev": [tuple(h) for h in prev], "flat": flat, "vocab": vocab,
                      "kept": [tuple(h) for h in histories], "scores": scores.copy()})
        for row, history in enumerate(histories):
            if history[-1] in eos:
                offer(scores[row], history, step)
                scores[row] = NEG_INF
    for row, history in enumerate(histories):
        offer(scores[row], history, settings.eval_len)
    out = np.zeros(settings.eval_len, dtype=np.int64)
    out[:len(best)] = best
    return {"steps": steps, "offers": offers, "output": out}


def _flat_index(step, history):
    """Flat candidate index of `history` (a kept row of this step) in the step's scores."""
    return step["prev"].index(tuple(history[:-1])) * step["vocab"] + history[-1]


def rule_violations(output, settings: BeamSettings) -> list:
    """(position, rule) where a beam output breaks a per-step rule of the spec: a token the
    no-repeat n-gram rule bans after its prefix, or an eos before min_length. The output is read
    up to its first eos, else without its trailing zeros (the padding after a shorter best)."""
    tokens = [int(x) for x in np.asarray(output)]
    eos = set(settings.eos_token_ids)
    unpadded = len(tokens)
    while unpadded and tokens[unpadded - 1] == 0:
        unpadded -= 1
    end = next((i + 1 for i, x in enumerate(tokens) if x in eos), unpadded)
    found = []
    for t in range(end):
        if tokens[t] in banned_ngram_tokens(tokens[:t], settings.no_repeat_ngram_size):
            found.append((t, "2b no-repeat n-gram"))
        if tokens[t] in eos and t < settings.min_length:
            found.append((t, "2b min_length"))
    return found


def _implementation_check(name, device_out, spec, settings):
    """Where a backend's own beam output departs from the spec run on its own logits: an output
    that breaks a per-step rule points at the search steps; one the spec also finished, but did
    not choose, at the final selection (rule 4); anything else at the search steps."""
    if device_out is None or np.array_equal(np.asarray(device_out), spec["output"]):
        return None
    device = [int(x) for x in np.asarray(device_out)]
    broken = rule_violations(device, settings)
    if broken:
        return {"cause": "implementation", "backend": name, "where": "search steps (rules 2a-2f)",
                "violations": broken}
    offered = any(device[:len(o["history"])] == o["history"] and
                  not any(device[len(o["history"]):]) for o in spec["offers"])
    return {"cause": "implementation", "backend": name,
            "where": "final selection (rule 4)" if offered else "search steps (rules 2a-2f)"}


def beam_divergence(query, torch_logits_fn, jittor_logits_fn, settings: BeamSettings,
                    torch_out=None, jittor_out=None, tie_tol: float = TIE_TOL,
                    torch_spec: dict = None) -> Optional[dict]:
    """Where and why the two backends' searches for `query` part; None when they agree.
    `*_out`: the backends' own beam outputs (checked against the spec on their own logits).
    `torch_spec`: traced_search's result for torch, when already computed."""
    spec_t = torch_spec or traced_search(torch_logits_fn, query, settings)
    spec_j = traced_search(jittor_logits_fn, query, settings)
    for name, out, spec in (("torch", torch_out, spec_t), ("jittor", jittor_out, spec_j)):
        found = _implementation_check(name, out, spec, settings)
        if found:
            return found
    for t, (st, sj) in enumerate(zip(spec_t["steps"], spec_j["steps"])):
        if st["kept"] == sj["kept"]:
            continue
        rank = next(i for i, (a, b) in enumerate(zip(st["kept"], sj["kept"])) if a != b)
        ht, hj = st["kept"][rank], sj["kept"][rank]
        it, ij = _flat_index(st, ht), _flat_index(sj, hj)
        margin_t = float(st["flat"][it] - st["flat"][ij])
        margin_j = float(sj["flat"][ij] - sj["flat"][it])
        return {"cause": "near-tie" if max(abs(margin_t), abs(margin_j)) < tie_tol else "logits",
                "step": t, "rank": rank, "torch_token": int(ht[-1]), "jittor_token": int(hj[-1]),
                "torch_history": list(ht), "jittor_history": list(hj),
                "margin_torch": margin_t, "margin_jittor": margin_j}
    if not np.array_equal(spec_t["output"], spec_j["output"]):
        return {"cause": "final selection", "step": None}
    return None


def summarize(divergences: Sequence[Optional[dict]]) -> dict:
    """Counts per cause and the smallest/largest margins, for a report."""
    found = [d for d in divergences if d]
    margins = [max(abs(d["margin_torch"]), abs(d["margin_jittor"])) for d in found if "margin_torch" in d]
    causes = {}
    for d in found:
        causes[d["cause"]] = causes.get(d["cause"], 0) + 1
    return {"queries": len(divergences), "differing": len(found), "causes": causes,
            "margin_min": min(margins) if margins else None,
            "margin_max": max(margins) if margins else None}


def next_logits_fn(backend: str, model) -> Callable:
    """`next_logits_fn(prefixes)` for traced_search: the model's full forward (no cache) over
    each prefix, right-padded (causal attention: padding after a prefix changes nothing)."""
    def run(prefixes):
        width = max(len(p) for p in prefixes)
        ids = np.zeros((len(prefixes), width), dtype=np.int64)
        for row, prefix in enumerate(prefixes):
            ids[row, :len(prefix)] = prefix
        last = np.array([len(p) - 1 for p in prefixes])
        if backend == "torch":
            import torch
            with torch.no_grad():
                logits, _ = model(torch.from_numpy(ids))
            return logits.float().numpy()[np.arange(len(prefixes)), last]
        from jittor_impl.runtime import jt
        with jt.no_grad():
            logits, _ = model(jt.array(ids))
        return logits.numpy()[np.arange(len(prefixes)), last]
    return run
