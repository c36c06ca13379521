"""alignment/beam_report.py (scripts/beam_divergence.py, work.sh's check stage) on a tiny seeded
model: only queries whose prediction files differ are analysed, and a prediction that departs
from the spec's search on its own backend's logits is blamed on that backend's beam code."""
import argparse
import json

import pytest

from alignment.divergence_step import next_logits_fn, traced_search
from alignment.beam_report import from_runs, read_predictions
from alignment.harness import seeded_state
from shared.text.batching import FTDataset
from shared.decode.beam_spec import BeamSettings
from shared.model.checkpoint import save_checkpoint
from shared.model.config import GPT2Config

SETTINGS = BeamSettings(beam=2, eval_len=4, length_penalty=0.8, no_repeat_ngram_size=4,
                        eos_token_ids=(50256, 628))
SEQ_LEN = 64
MODEL = argparse.Namespace(model_card="gpt2.sm", n_embd=32, n_layer=2, n_head=2, lora_dim=4,
                           lora_alpha=16, device="cpu")


def write_predictions(path, predictions):
    with open(path, "w") as f:
        for query_id, predict in predictions.items():
            f.write(json.dumps({"id": query_id, "predict": [int(t) for t in predict]}) + "\n")


def test_only_differing_queries_are_analysed_and_a_departing_beam_is_blamed(tmp_path, encoded):
    from torch_impl.model import GPT2LMModel
    config = GPT2Config.from_model_card("gpt2.sm", n_embd=32, n_layer=2, n_head=2,
                                        lora_attn_dim=4, lora_attn_alpha=16)
    checkpoint = str(tmp_path / "model.safetensors")
    save_checkpoint(checkpoint, seeded_state(config, 3))
    data = str(encoded / "valid.jsonl")
    dataset = FTDataset.from_file(data, 1, SEQ_LEN, SETTINGS.eval_len)
    model = GPT2LMModel(config)
    model.load_weight(checkpoint)
    model.eval()
    width = SEQ_LEN - SETTINGS.eval_len
    spec = {i: traced_search(next_logits_fn("torch", model), dataset.samples[i][0][-width:], SETTINGS)["output"]
            for i in range(3)}
    torch_preds = {i: list(out) for i, out in spec.items()}
    jittor_preds = dict(torch_preds)
    jittor_preds[1] = [t + 1 for t in torch_preds[1]]  # not what any search on these logits gives
    paths = {"torch": str(tmp_path / "t.jsonl"), "jittor": str(tmp_path / "j.jsonl")}
    write_predictions(paths["torch"], torch_preds)
    write_predictions(paths["jittor"], jittor_preds)
    document = from_runs(MODEL, {"torch": checkpoint, "jittor": checkpoint}, paths, data, SETTINGS,
                         SEQ_LEN, str(tmp_path / "out"), max_queries=5)
    assert (document["queries"], document["differing"], document["analysed"]) == (3, 1, 1)
    (found,) = document["divergences"]
    assert found["query_id"] == 1 and found["cause"] == "implementation" and found["backend"] == "jittor"
    section = (tmp_path / "out" / "report_section.md").read_text()
    assert "1 of 3 queries differ between the backends; 1 analysed." in section
    assert "| 1 | implementation |" in section
    assert json.loads((tmp_path / "out" / "beam_divergence.json").read_text())["differing"] == 1


def test_a_damaged_prediction_file_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 0, "predict": [1, 2]}\nnot json\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: not a prediction line"):
        read_predictions(str(path))
