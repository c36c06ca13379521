"""BLEU and NIST against numbers printed by the official E2E scorer, not by this code.

The expected values below were produced by running tuetschek/e2e-metrics (commit 1b9c4d8),
`metrics/pymteval.py` — the BLEU/NIST behind its `measure_scores.py -p` — on the two small
corpora written out here, with its own file reader (lines stripped, reference groups split on
empty lines), and printing `%.10f`. They cover the input classes where a hand-written port can
drift: an empty hypothesis, curly quotes and an apostrophe, an em dash, accented letters, an
all-capitals sentence and a degenerate repetition. Only the empty line differed (this code gave
the empty hypothesis no token at all; the scorer's split(" ") gives it one empty token).

For comparison, the scorer's Perl mode (`mteval/mteval-v13a-sig.pl`, run here through the SGML
files its measure_scores.py writes) prints NIST 2.6049 / BLEU 0.2776 for NO_EMPTY, the same as
below, and NIST 2.2013 / BLEU 0.2310 with the empty line: it scores an empty segment in a third
way. The project reports the `-p` mode's values, as the E2E papers do.
"""
import pytest

from shared.metrics import mteval
from shared.metrics.e2e import read_predictions, read_references

REFERENCES = """\
The Eagle is a coffee shop near Burger King.
The Eagle coffee shop is near Burger King in the city centre.

Café Rouge serves French food — it is cheap.
Cafe Rouge is a cheap French restaurant.

"The Mill" is a pub by the river.
The Mill pub is located by the riverside.

THE WRESTLERS IS A FAMILY FRIENDLY RESTAURANT.
The Wrestlers is family friendly.

Zizzi is a coffee shop with a rating of 5 out of 5.
Zizzi, a coffee shop, has a 5-star rating.

Loch Fyne serves Japanese food in the city centre.
Loch Fyne is a Japanese restaurant.
"""

HYPOTHESES = [
    "The Eagle is a coffee shop near Burger King.",
    "",
    "Café Rouge serves cheap French food — near the river.",
    "\u201cThe Mill\u201d is a pub by the river\u2019s side.",
    "THE WRESTLERS IS A FAMILY FRIENDLY RESTAURANT.",
    "Zizzi is a coffee shop coffee shop coffee shop coffee shop coffee shop coffee shop.",
]
# the same corpus with the empty hypothesis replaced by a sentence
NO_EMPTY = HYPOTHESES[:1] + ["Cafe Rouge is cheap."] + HYPOTHESES[2:]

# (hypotheses, official BLEU, official NIST), each printed with 10 decimals by pymteval
OFFICIAL = [
    (HYPOTHESES, 0.2388798374, 2.2025366819),
    (NO_EMPTY, 0.2776332205, 2.6049298710),
]


@pytest.fixture()
def references(tmp_path):
    path = tmp_path / "ref.txt"
    path.write_text(REFERENCES, encoding="utf-8")
    return read_references(str(path))


@pytest.mark.parametrize("hypotheses, bleu, nist", OFFICIAL, ids=["with-empty-line", "no-empty-line"])
def test_bleu_and_nist_equal_the_official_scorer(tmp_path, references, hypotheses, bleu, nist):
    pred = tmp_path / "pred.txt"
    pred.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    predictions = read_predictions(str(pred))
    assert mteval.bleu(references, predictions) == pytest.approx(bleu, abs=1e-10)
    assert mteval.nist(references, predictions) == pytest.approx(nist, abs=1e-10)
    # and to the last printed digit of the scorer's report
    assert f"{mteval.nist(references, predictions):.4f}" == f"{nist:.4f}"


def test_an_empty_hypothesis_is_one_empty_token_as_in_the_official_tokeniser():
    """pymteval splits the stripped, space-padded text on ' ', so '' gives [''] (length 1):
    the empty line counts one token in the n-gram totals and the length ratio."""
    assert mteval.tokenize("") == [""]
    assert mteval.tokenize("  \t ") == [""]
