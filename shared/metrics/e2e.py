"""The E2E NLG Challenge scores of a system output file: BLEU, NIST, METEOR, ROUGE_L, CIDEr.

Mirrors tuetschek/e2e-metrics `measure_scores.py -p` (file formats, which library computes
what, output lines), so numbers can be compared with the LoRA paper and its ports.

Files are UTF-8. References: one reference per line, the references of one instance on
consecutive lines, instances separated by one empty line (blank lines at the end of the file are
ignored). Predictions: one line per instance, same order; an empty line is an empty prediction
and is scored as such (it earns nothing, it does not crash a scorer). Lines are stripped.

Non-ASCII text is scored, not rejected: BLEU/NIST's tokeniser splits only ASCII punctuation and
keeps other characters inside tokens (lowercased with Python's Unicode rules); the PTB tokeniser
behind METEOR/ROUGE_L/CIDEr keeps accented and CJK letters and rewrites a few symbols (see
`coco`).
"""
from __future__ import annotations

from shared.metrics import coco, mteval

SCORE_NAMES = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
NIST_NOTE = ("Note: NIST is the Python mteval port's value (measure_scores.py -p); "
             "the Perl mteval-v13a gives a different NIST.")


def _read_lines(path) -> list[str]:
    """Lines without their line ends; a UTF-8 error names the file and line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line does not start another one
        lines.pop()
    return lines


def read_references(path) -> list[list[str]]:
    """Reference groups, one list of stripped sentences per instance."""
    groups, current, stray_blank = [], [], None
    for lineno, raw in enumerate(_read_lines(path), 1):
        line = raw.strip()
        if not line:
            if current:
                groups.append(current)
                current = []
            elif stray_blank is None:
                stray_blank = lineno
            continue
        if stray_blank is not None:
            raise ValueError(f"{path}:{stray_blank}: empty line that does not end a reference "
                             "group (instances are separated by exactly one empty line)")
        current.append(line)
    if current:
        groups.append(current)
    if not groups:
        raise ValueError(f"{path}: no references")
    return groups


def read_predictions(path) -> list[str]:
    """One stripped prediction per line (possibly empty)."""
    return [line.strip() for line in _read_lines(path)]


def score_corpus(references: list[list[str]], predictions: list[str],
                 meteor: bool = True) -> dict[str, float | None]:
    """All five scores of in-memory text; METEOR is None when skipped (`meteor=False`)."""
    scores = {"BLEU": mteval.bleu(references, predictions),
              "NIST": mteval.nist(references, predictions)}
    scores.update(coco.coco_scores(references, predictions, meteor=meteor))
    return {name: scores[name] for name in SCORE_NAMES}


def measure_scores(ref_path, pred_path, meteor: bool = True) -> dict[str, float | None]:
    references = read_references(ref_path)
    predictions = read_predictions(pred_path)
    if len(references) != len(predictions):
        raise ValueError(f"{ref_path} has {len(references)} reference groups but {pred_path} "
                         f"has {len(predictions)} predictions (lines); they must match")
    return score_corpus(references, predictions, meteor=meteor)


def format_scores(scores: dict) -> str:
    """`NAME: value` lines with four decimals (BLEU as a fraction), then the NIST note."""
    lines = []
    for name in SCORE_NAMES:
        value = scores.get(name)
        lines.append(f"{name}: skipped" if value is None else f"{name}: {value:.4f}")
    lines.append(NIST_NOTE)
    return "\n".join(lines)
