"""METEOR, ROUGE_L and CIDEr the way the E2E scorer gets them: MS-COCO caption evaluation code.

Both sides go through pycocoevalcap's `PTBTokenizer` (Stanford PTB tokeniser, Java: lowercases,
splits punctuation and then drops most of it), then `Meteor` (METEOR 1.5 jar, Java), `Rouge`
(ROUGE-L, beta 1.2) and `Cider` (CIDEr-D, sigma 6, document frequencies from this corpus's
references) score the tokenised text. `COCOEvalCap` is not used: it also runs SPICE, which
downloads models.

Text handling, decided here because the Java tools are line-oriented:
- Whitespace inside a sentence (including characters Java treats as line breaks, such as
  U+2028 or a vertical tab) is collapsed to single spaces before tokenising, so one sentence
  stays one line and captions cannot shift onto each other's ids.
- An empty (or whitespace-only) sentence is not sent to the tokeniser; it tokenises to "".
  METEOR then scores that instance 0, ROUGE_L scores it 0 and CIDEr scores it 0.
- Non-ASCII text is kept: the PTB tokeniser reads and writes UTF-8 and keeps accented and CJK
  letters inside words; it rewrites a few symbols the PTB way (for instance "£" becomes "#",
  brackets become "-lrb-"/"-rrb-", dashes and quotes are dropped as punctuation). METEOR gets
  the tokenised text as UTF-8.
"""
from __future__ import annotations

import shutil

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer


def require_java(what: str) -> None:
    if shutil.which("java") is None:
        raise RuntimeError(f"{what} runs a Java program, but no 'java' is on PATH; install a "
                           "Java runtime (e.g. apt-get install default-jre-headless)")


def ptb_tokenize(sentences: list[str]) -> list[str]:
    """PTB-tokenise each sentence (lowercased, most punctuation removed), in one Java call."""
    normalised = [" ".join(s.split()) for s in sentences]
    to_java = {i: [{"caption": s}] for i, s in enumerate(normalised) if s}
    tokenized = {}
    if to_java:
        require_java("the PTB tokeniser for METEOR/ROUGE_L/CIDEr (stanford-corenlp-3.4.1.jar)")
        tokenized = PTBTokenizer().tokenize(to_java)
        lost = [i for i in to_java if len(tokenized.get(i, [])) != 1]
        if lost:
            raise RuntimeError(f"the PTB tokeniser returned no line for {len(lost)} of "
                               f"{len(to_java)} sentences (first: {sentences[lost[0]]!r})")
    return [tokenized[i][0] if i in tokenized else "" for i in range(len(sentences))]


def _meteor_score(gts: dict, res: dict) -> float:
    require_java("METEOR (meteor-1.5.jar)")
    meteor = Meteor()
    try:
        return float(meteor.compute_score(gts, res)[0])
    except ValueError as err:  # the jar died or printed something other than a score
        meteor.meteor_p.kill()
        stderr = meteor.meteor_p.stderr.read().decode(errors="replace").strip()
        raise RuntimeError(f"METEOR (java -jar meteor-1.5.jar) gave no score: {err}; "
                           f"its stderr: {stderr[-2000:]}") from err
    finally:
        # compute_score leaves its lock held when it fails, and Meteor.__del__ takes that
        # lock: release it, then stop the JVM now rather than at garbage collection.
        if meteor.lock.locked():
            meteor.lock.release()
        meteor.__del__()


def coco_scores(references: list[list[str]], hypotheses: list[str],
                meteor: bool = True) -> dict[str, float | None]:
    """{'METEOR', 'ROUGE_L', 'CIDEr'} for the corpus; METEOR is None when skipped."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference groups but {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("cannot score an empty corpus")
    flat = [ref for refs in references for ref in refs] + list(hypotheses)
    tokens = ptb_tokenize(flat)
    gts, pos = {}, 0
    for i, refs in enumerate(references):
        gts[i] = tokens[pos:pos + len(refs)]
        pos += len(refs)
    res = {i: [tokens[pos + i]] for i in range(len(hypotheses))}
    return {
        "METEOR": _meteor_score(gts, res) if meteor else None,
        "ROUGE_L": float(Rouge().compute_score(gts, res)[0]),
        "CIDEr": float(Cider().compute_score(gts, res)[0]),
    }
