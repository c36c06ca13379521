"""scripts/metric_intervals.py's work: read the references and the prediction files, bootstrap
each metric's torch - jittor difference (alignment.metric_equivalence) and, when a second torch
run is given, the seed band; write OUT/metric_intervals.{json,md} and work.sh's report section."""
from __future__ import annotations

import os

from shared.runtime.atomic import write_json, write_text
from shared.metrics.e2e import read_predictions, read_references

from .metric_equivalence import metric_equivalence
from .report_sections import metric_intervals_section

SYSTEMS = ("torch", "jittor", "torch_seed2")


def read_reference_groups(path: str, raw: bool = False) -> list:
    """measure_scores.py's reference format (groups separated by an empty line), or a raw E2E
    split's MRs grouped (`raw`)."""
    if raw:
        from shared.decode.scorer_files import group_references
        from shared.text.e2e_data import read_raw
        return list(group_references(read_raw(path), path).values())
    return read_references(path)


def intervals_from_files(references: str, predictions: dict, out_dir: str, raw: bool = False,
                         resamples: int = 1000, seed: int = 0) -> dict:
    """`predictions`: {"torch": path, "jittor": path, "torch_seed2": path or None}. Returns the
    result of metric_equivalence with the inputs named; raises ValueError on bad input."""
    if resamples < 1000:
        raise ValueError(f"--resamples must be >= 1000, got {resamples}")
    refs = read_reference_groups(references, raw)
    hyps = {k: read_predictions(predictions[k]) if predictions.get(k) else None for k in SYSTEMS}
    for name, hyp in hyps.items():
        if hyp is not None and len(hyp) != len(refs):
            raise ValueError(f"--{name} {predictions[name]} has {len(hyp)} lines for {len(refs)} MRs")
    result = metric_equivalence(refs, hyps["torch"], hyps["jittor"], hyps["torch_seed2"],
                                resamples=resamples, seed=seed)
    result["inputs"] = dict({k: predictions.get(k) for k in SYSTEMS}, references=references)
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "metric_intervals.json"), result)
    text = metric_intervals_section(result)
    write_text(os.path.join(out_dir, "metric_intervals.md"), text)
    write_text(os.path.join(out_dir, "report_section.md"), text)
    return result
