"""For the pretraining and classification alignment tests: small deterministic inputs (a made-up
text file and a `label<TAB>text` spam file, drawn from fixed word lists by seed) and the check
that the two backends' runs of a task script agree."""
import numpy as np

from alignment.harness import compare

WORDS = ("the painter said that every effort moves you toward a picture of light and the "
         "room was quiet when she looked at his work again").split()
HAM = "see you at lunch tomorrow ok I will call you later when I get home".split()
SPAM = "WIN a FREE prize now call 0800 to claim your cash reward text STOP".split()


def write_text_file(path, n_sentences=120, seed=0):
    rng = np.random.default_rng(seed)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(5, 12))).capitalize() + "."
                 for _ in range(n_sentences)]
    path.write_text(" ".join(sentences) + "\n", encoding="utf-8")
    return path


def write_spam_file(path, n_lines=80, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_lines):
        spam = i % 4 == 0  # a minority class, as in SMS spam
        words = SPAM if spam else HAM
        lines.append(("spam" if spam else "ham") + "\t"
                     + " ".join(rng.choice(words, size=rng.integers(3, 12))))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_task_runs_agree(task, torch_run, jittor_run, steps, loss_rtol, weight_atol):
    """Both backends' runs of a task script (each `(train_log.jsonl records, checkpoint weights)`)
    log the same steps 1..`steps`, training and validation losses within `loss_rtol` and
    checkpoint the same weights within `weight_atol`."""
    (t_records, t_weights), (j_records, j_weights) = torch_run, jittor_run
    t_train = [r for r in t_records if r["kind"] == "train"]
    j_train = [r for r in j_records if r["kind"] == "train"]
    assert [r["step"] for r in t_train] == [r["step"] for r in j_train] == list(range(1, steps + 1))
    compare(f"{task}/train_loss", np.array([r["loss"] for r in j_train]),
            np.array([r["loss"] for r in t_train]), 0.0, loss_rtol)
    compare(f"{task}/valid_loss",
            np.array([r["valid_loss"] for r in j_records if r["kind"] == "valid"]),
            np.array([r["valid_loss"] for r in t_records if r["kind"] == "valid"]), 0.0, loss_rtol)
    assert sorted(t_weights) == sorted(j_weights)
    for name in t_weights:
        compare(f"{task}/weights/{name}", j_weights[name], t_weights[name], weight_atol, 0.0)
