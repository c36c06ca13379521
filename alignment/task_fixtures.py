"""Small deterministic inputs for the pretraining and classification alignment tests: a made-up
text file and a `label<TAB>text` spam file, drawn from fixed word lists by seed."""
import numpy as np

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
