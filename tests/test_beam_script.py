"""gpt2_beam.py --unique_contexts: generating once per distinct MR gives the same decoded files."""
import json

from shared.text.batching import FTDataset
from shared.model.checkpoint import save_checkpoint
from shared.model.config import GPT2Config
from shared.text.e2e_data import prepare_e2e
from shared.model.params import init_state_dict



def test_first_of_each_context_keeps_order_and_first_lines():
    samples = [([1, 2], [9]), ([3], [8]), ([1, 2], [7]), ([4], [6]), ([3], [5])]
    assert FTDataset(samples, batch_size=2, seq_len=8).first_of_each_context() == [0, 1, 3]


def test_unique_contexts_gives_the_same_decoded_files(tmp_path, e2e_dir, vocab_dir, run_in_process):
    """In this process: the claim is about the files (the pipeline tests start both scripts)."""
    data = tmp_path / "data"
    prepare_e2e(e2e_dir, str(data), vocab_dir=vocab_dir, splits=("test",))
    for name in ("test.jsonl", "test_formatted.jsonl"):  # the first 40 lines: a few MRs, repeated
        lines = (data / name).read_text().splitlines(keepends=True)[:40]
        (data / name).write_text("".join(lines))
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2)
    save_checkpoint(tmp_path / "model.safetensors", init_state_dict(config, seed=1))
    outputs = {}
    for mode, extra in (("all", []), ("unique", ["--unique_contexts"])):
        work = tmp_path / mode
        status, _, err = run_in_process(
            "gpt2_beam", "--backend", "torch", "--device", "cpu", "--data", data / "test.jsonl",
            "--n_embd", "32", "--n_layer", "1", "--n_head", "2", "--init_checkpoint",
            tmp_path / "model.safetensors", "--batch_size", "7", "--seq_len", "96", "--eval_len",
            "6", "--beam", "2", "--work_dir", work, "--output_file", "p.jsonl", "--no_progress",
            *extra)
        assert status == 0, err
        status, _, err = run_in_process(
            "gpt2_decode", "--vocab", vocab_dir, "--sample_file", work / "p.jsonl", "--input_file",
            data / "test_formatted.jsonl", "--output_ref_file", work / "ref.txt",
            "--output_pred_file", work / "pred.txt")
        assert status == 0, err
        outputs[mode] = ((work / "ref.txt").read_text(), (work / "pred.txt").read_text(),
                         [json.loads(line)["id"] for line in (work / "p.jsonl").read_text().splitlines()])
    assert outputs["all"][:2] == outputs["unique"][:2]
    n_mrs = len(outputs["unique"][1].splitlines())
    assert len(outputs["all"][2]) == 40 and len(outputs["unique"][2]) == n_mrs < 40
