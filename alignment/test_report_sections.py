"""The report sections render the harness's JSON results (synthetic inputs, no backend needed)."""
from alignment.report_sections import (beam_divergence_section, metric_intervals_section,
                                       per_layer_section)


def test_sections_render_their_results():
    doc = {"first_divergence": {"forward": "transformer.h.0.mlp", "backward": None},
           "rule": {"k": 8.0, "floor": 2.4e-7}, "precision": "fp32", "device": "cpu",
           "compared": 2, "failing": 1, "forward_order": ["transformer.h.0.mlp", "loss"],
           "per_module": {"transformer.h.0.mlp": {"outputs": [1e-7, 3e-4], "output_grads": [1e-7, None]},
                          "loss": {"outputs": [1e-8, 1e-8], "output_grads": [0.0, 0.0]}},
           "records": [{"batch": 0, "kind": "outputs", "name": "transformer.h.0.mlp", "passed": False,
                        "err_test": 3e-4, "err_base": 1e-7, "bound": 1e-6, "cosine": 0.99, "why": "exceeds bound"}]}
    text = per_layer_section(doc)
    assert "forward `transformer.h.0.mlp`" in text and "| h.0 | 1.00e-07 | 3.00e-04 |" in text
    assert "non-finite" in text
    beams = [None, {"cause": "near-tie", "step": 3, "torch_token": 11, "jittor_token": 12,
                    "margin_torch": 2e-7, "margin_jittor": 1e-7}]
    text = beam_divergence_section(beams)
    assert "1 of 2 queries differ" in text and "near-tie: 1" in text and "| 1 | near-tie | 3 | 11 | 12 |" in text
    result = {"cross_framework": {"BLEU": {"observed": 0.005, "lo": -0.001, "hi": 0.012}},
              "seed_band": {"BLEU": {"observed": 0.004, "lo": -0.002, "hi": 0.011}},
              "inside_band": {"BLEU": True}}
    text = metric_intervals_section(result)
    assert "| BLEU | +0.0050 | [-0.0010, +0.0120] | [-0.0020, +0.0110] | yes |" in text


def test_metric_intervals_without_a_seed_band_say_so():
    result = {"cross_framework": {"BLEU": {"observed": 0.005, "lo": -0.001, "hi": 0.012}}}
    text = metric_intervals_section(result)
    assert "| BLEU | +0.0050 | [-0.0010, +0.0120] | - | - |" in text
    assert "No seed band: no second torch run" in text


def test_beam_section_counts_all_queries_when_some_are_analysed():
    beams = [{"cause": "logits", "step": 2, "torch_token": 5, "jittor_token": 7,
              "margin_torch": 0.3, "margin_jittor": 0.2}]
    text = beam_divergence_section(beams, ids=[41], queries=630, differing=3)
    assert "3 of 630 queries differ between the backends; 1 analysed (the first 1)." in text
    assert "| 41 | logits | 2 | 5 | 7 | 3.00e-01 | 2.00e-01 |" in text
