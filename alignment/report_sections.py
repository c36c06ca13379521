"""Markdown sections for work.sh's report (shared/pipeline/report.py), from the harness's results: the
per-layer check, the beam divergence summary, and the metric intervals with the seed band.
Each takes the plain JSON-able result of its module, so the pipeline can compute them in its
check/metrics stages, store them in report.json and render them here."""
from __future__ import annotations

from . import metric_equivalence
from alignment.layer_report import per_layer_section  # from alignment.layer_report.run (or diff_layers.json)

__all__ = ["per_layer_section", "beam_divergence_section", "metric_intervals_section"]


def beam_divergence_section(divergences: list, ids: list = None, queries: int = None,
                            differing: int = None) -> str:
    """From alignment.divergence_step.beam_divergence per query (None where outputs agree).
    `ids` labels the rows (default: the list index); `queries`/`differing` count all queries
    when only some of the differing ones were analysed (alignment.beam_report)."""
    from alignment.divergence_step import TIE_TOL, summarize
    s = summarize(divergences)
    ids = list(range(len(divergences))) if ids is None else ids
    headline = f"{s['differing']} of {s['queries']} queries differ between the backends."
    if queries is not None:
        headline = (f"{differing} of {queries} queries differ between the backends; "
                    f"{len(divergences)} analysed" + (f" (the first {len(divergences)})"
                                                      if len(divergences) < differing else "") + ".")
    lines = ["## Beam divergence", "", headline]
    if divergences and s["differing"]:
        causes = ", ".join(f"{k}: {v}" for k, v in sorted(s["causes"].items()))
        lines.append(f"Causes: {causes}.")
        if s["margin_min"] is not None:
            lines.append(f"Score margins at the first parting step: {s['margin_min']:.2e} to "
                         f"{s['margin_max']:.2e} (a near-tie is below "
                         f"{TIE_TOL:g}).")
        lines += ["", "| query | cause | step | torch token | jittor token | margin (torch) | margin (jittor) |",
                  "|---|---|---|---|---|---|---|"]
        for i, d in zip(ids, divergences):
            if d:
                g = lambda k, f="{}": f.format(d[k]) if d.get(k) is not None else "-"  # noqa: E731
                lines.append(f"| {i} | {d['cause']} | {g('step')} | {g('torch_token')} | "
                             f"{g('jittor_token')} | {g('margin_torch', '{:.2e}')} | "
                             f"{g('margin_jittor', '{:.2e}')} |")
    return "\n".join(lines) + "\n"


def metric_intervals_section(result: dict) -> str:
    """From alignment.metric_equivalence.metric_equivalence."""
    band = ("" if "seed_band" in result else
            "\nNo seed band: no second torch run with another seed was given, so whether the "
            "torch - jittor difference lies within seed noise is not judged here "
            "(`bash work.sh --seed_band` trains one).\n")
    return ("## Metric intervals (paired bootstrap over MRs)\n\n"
            + metric_equivalence.markdown(result) + band
            + "\nMETEOR is not bootstrapped (see alignment/metric_equivalence.py).\n")
