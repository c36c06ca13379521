"""Data of the pretraining and classification tasks: bad input named by file and line, windows,
seeded splits, class balance and metrics (shared/text/text_data.py, shared/text/classify_data.py)."""
import numpy as np
import pytest

from shared.model.classifier_params import is_trainable
from shared.text.classify_data import (ClassifyDataError, ClassifyDataset, class_weights,
                                       classification_metrics, prepare_splits, read_labelled)
from shared.text.text_data import TextDataError, WindowDataset, read_text_file, split_tail


class CharTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]


def test_empty_and_non_utf8_text_files_are_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(TextDataError, match=f"{empty}: the file is empty"):
        read_text_file(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"first line\ncaf\xe9\n")
    with pytest.raises(TextDataError, match=f"{latin}:2: not UTF-8"):
        read_text_file(latin)
    with pytest.raises(TextDataError, match="not found"):
        read_text_file(tmp_path / "missing.txt")


def test_windows_and_tail_split():
    tokens = np.arange(100)
    train, valid = split_tail(tokens, 0.2, seq_len=8)
    assert train.tolist() == list(range(80)) and valid.tolist() == list(range(80, 100))
    with pytest.raises(TextDataError, match="validation part has 10 tokens"):
        split_tail(tokens, 0.1, seq_len=16)
    data = WindowDataset(train, seq_len=8, stride=4, batch_size=3)
    assert data.starts == list(range(0, 72, 4)) and data.num_batches == 6
    batch = data.collate([0, 2])
    assert batch["input"][1].tolist() == list(range(8, 16))
    assert batch["target"][1].tolist() == list(range(9, 17))
    assert batch["mask"].shape == (2, 8) and batch["mask"].all()
    assert data.truncation_report().startswith("text: 3 of 80 tokens fall outside")  # 77..79
    first = [b["input"].tolist() for b in data.train_batches(2, seed=1)]
    assert first == [b["input"].tolist() for b in data.train_batches(2, seed=1)]
    assert first[2:] == [b["input"].tolist() for b in data.train_batches(2, seed=1, start_batch=2)]
    gappy = WindowDataset(train, seq_len=8, stride=12, batch_size=2)
    assert "fall outside every window" in gappy.truncation_report()


def test_spam_lines_are_checked_with_file_and_line(tmp_path):
    path = tmp_path / "spam.tsv"
    path.write_text("ham\thello\nspam no tab here\n", encoding="utf-8")
    with pytest.raises(ClassifyDataError, match=f"{path}:2: no tab"):
        read_labelled(path)
    path.write_text("ham\thello\neggs\tbad label\n", encoding="utf-8")
    with pytest.raises(ClassifyDataError, match=f"{path}:2: unknown label 'eggs'"):
        read_labelled(path)
    path.write_text("ham\t \n", encoding="utf-8")
    with pytest.raises(ClassifyDataError, match=f"{path}:1: empty text"):
        read_labelled(path)
    path.write_text("ham\thello\r\nspam\tWIN\n\n\n", encoding="utf-8")
    assert read_labelled(path) == [(0, "hello", 1), (1, "WIN", 2)]


def spam_file(tmp_path, n_ham=60, n_spam=15):
    path = tmp_path / "spam.tsv"
    lines = [f"ham\tmessage {i}" for i in range(n_ham)] + [f"spam\toffer {i}" for i in range(n_spam)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_splits_are_seeded_stratified_and_balanced(tmp_path):
    path = spam_file(tmp_path)
    splits, weights = prepare_splits(path, seed=3, balance="undersample")
    assert weights is None
    for part in splits.values():
        labels = [e[0] for e in part]
        assert labels.count(0) == labels.count(1)
    assert sum(len(p) for p in splits.values()) == 30
    again, _ = prepare_splits(path, seed=3, balance="undersample")
    assert again == splits
    other, _ = prepare_splits(path, seed=4, balance="undersample")
    assert other != splits
    full, weights = prepare_splits(path, seed=3, balance="class_weights")
    assert sum(len(p) for p in full.values()) == 75
    counts = np.bincount([e[0] for e in full["train"]])
    assert np.allclose(np.array(weights) * counts, counts.sum() / 2)
    assert class_weights([(0, "a", 1), (0, "b", 2), (1, "c", 3)]) == [0.75, 1.5]


@pytest.mark.parametrize("balance", ["undersample", "class_weights", "none"])
def test_a_class_missing_from_the_file_or_a_split_stops_naming_both(tmp_path, balance):
    """One-class data trained to 'accuracy 1.0000, F1 0.0000': now it stops before training."""
    path = spam_file(tmp_path, n_ham=40, n_spam=0)
    with pytest.raises(ClassifyDataError, match=r"spam\.tsv: no 'spam' example, so the train, "
                       r"valid and test splits have none"):
        prepare_splits(path, seed=3, balance=balance)
    path = spam_file(tmp_path, n_ham=40, n_spam=3)  # 3 spam: 2 train, 0 valid, 1 test
    if balance == "undersample":  # 3 of each class: the valid split is empty altogether
        message = r"the valid split is empty \(6 examples\)"
    else:
        message = (r"spam\.tsv: the valid split has no 'spam' example \(3 in the file, split "
                   r"0\.7,0\.1,0\.2, balance " + balance + r"\): give more 'spam' examples")
    with pytest.raises(ClassifyDataError, match=message):
        prepare_splits(path, seed=3, balance=balance)
    splits, _ = prepare_splits(spam_file(tmp_path, n_ham=40, n_spam=10), 3, balance)
    assert all(set(e[0] for e in part) == {0, 1} for part in splits.values())


def test_classify_batches_cut_and_pad(tmp_path):
    examples = [(0, "abcdef", 1), (1, "xy", 2)]
    data = ClassifyDataset(examples, CharTokenizer(), batch_size=2, max_len=4)
    assert "1 of 2 texts are longer than max_len 4" in data.truncation_report()
    batch = next(data.eval_batches())
    assert batch["input"].tolist() == [[97, 98, 99, 100], [120, 121, 50256, 50256]]
    assert batch["length"].tolist() == [4, 2] and batch["label"].tolist() == [0, 1]
    wide = ClassifyDataset(examples[1:], CharTokenizer(), 2, 6, fixed_width=True)
    assert next(wide.eval_batches())["input"].shape == (1, 6)


def test_metrics_and_confusion_matrix():
    m = classification_metrics([0, 0, 1, 1, 1], [0, 1, 1, 1, 0])
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    none = classification_metrics([0, 0], [0, 0])
    assert none["precision"] == none["recall"] == none["f1"] == 0.0


def test_trainable_parts():
    names = ["transformer.wte.weight", "transformer.h.0.ln_1.weight", "transformer.h.1.mlp.c_fc.weight",
             "transformer.h.1.attn.c_attn.lora_A", "transformer.ln_f.bias", "score.weight"]
    assert [n for n in names if is_trainable(n, "last", 2)] == names[2:]
    assert [n for n in names if is_trainable(n, "lora", 2)] == [names[3], names[5]]
    assert all(is_trainable(n, "all", 2) for n in names)
    with pytest.raises(ValueError, match="--trainable"):
        is_trainable(names[0], "head", 2)


def test_windows_report_a_stream_they_mostly_skip():
    """The trainer's dataset interface on text windows: a stride far above seq_len is loud."""
    tokens = np.arange(100)
    dense = WindowDataset(tokens, seq_len=8, stride=8, batch_size=2, name="story.txt")
    assert dense.source == "story.txt" and dense.completion_report() == ""
    assert not dense.keeps_no_completion()
    sparse = WindowDataset(tokens, seq_len=4, stride=20, batch_size=2, name="story.txt")
    report = sparse.completion_report()  # windows at 0, 20, 40, 60, 80 predict 4 tokens each
    assert report.startswith("WARNING: story.txt: only 20 of 99 tokens") and "--stride" in report
    assert not sparse.keeps_no_completion()


def test_a_classification_split_where_every_text_is_cut_is_an_error(tmp_path):
    """Every text cut at max_len: the trainer refuses to start, naming the split and max_len."""
    from shared.tasks.classify_task import build_classify_parser
    from shared.train.trainer import Trainer, TrainingError
    examples = [(0, "abcdef", 1), (1, "uvwxyz", 2), (0, "ab", 3)]
    some = ClassifyDataset(examples, CharTokenizer(), batch_size=2, max_len=4, name="train")
    assert some.source == "train" and not some.keeps_no_completion()
    assert some.completion_report().startswith("WARNING: train: 2 of 3 texts are cut")
    every = ClassifyDataset(examples[:2], CharTokenizer(), batch_size=2, max_len=4, name="train")
    assert every.keeps_no_completion() and "Raise --max_len" in every.no_completion_error()
    args = build_classify_parser().parse_args([
        "--backend", "torch", "--n_embd", "8", "--n_layer", "1", "--n_head", "2", "--max_len",
        "4", "--max_step", "1", "--work_dir", str(tmp_path / "w"), "--device", "cpu"])
    with pytest.raises(TrainingError, match="every one of the 2 texts is longer than --max_len 4"):
        Trainer(args, backend_cls=None, datasets=(every, some))  # refused before any backend


def test_check_batch_validates_targets_masks_and_classifier_lengths():
    from shared.text.batching import check_batch
    from shared.model.config import GPT2Config
    config = GPT2Config(n_embd=8, n_layer=1, n_head=2, n_positions=4, n_ctx=4, vocab_size=10)
    ids = np.zeros((2, 4), dtype=np.int64)
    check_batch({"input": ids, "target": ids, "mask": np.ones((2, 4), np.float32)}, config)
    with pytest.raises(ValueError, match="token id 10"):
        check_batch({"input": ids, "target": ids + 10, "mask": np.ones((2, 4))}, config)
    with pytest.raises(ValueError, match="batch mask has shape"):
        check_batch({"input": ids, "target": ids, "mask": np.ones((2, 3))}, config)
    check_batch({"input": ids, "length": np.array([4, 1]), "label": np.array([0, 1])}, config)
    for bad in ([0, 2], [5, 2]):
        with pytest.raises(ValueError, match="row length"):
            check_batch({"input": ids, "length": np.array(bad), "label": np.array([0, 1])},
                        config)
