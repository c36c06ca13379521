#!/usr/bin/env python
"""Score an E2E system output: BLEU, NIST, METEOR, ROUGE_L, CIDEr, as e2e-metrics' script -p.

Usage: python scripts/measure_scores.py REF PRED [-p] [--no_meteor] [--json OUT]
REF holds the references of each instance on consecutive lines, instances separated by one empty
line; PRED one output line per instance.
"""
import sys

from shared.runtime.atomic import write_json
from shared.metrics import format_scores, measure_scores
from shared.runtime.preflight import output_file_problems
from shared.runtime.entry_point import run_stoppable
from shared.runtime.config_parser import ConfigArgumentParser


def main(argv=None):
    parser = ConfigArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref_file", help="references, groups separated by one empty line")
    parser.add_argument("pred_file", help="system outputs, one line per instance")
    parser.add_argument("-p", "--python", action="store_true",
                        help="accepted for compatibility: BLEU/NIST always come from the "
                             "Python mteval port, as the official script's -p mode")
    parser.add_argument("--no_meteor", action="store_true",
                        help="skip METEOR (its JVM start and paraphrase table take ~20 s)")
    parser.add_argument("--json", metavar="OUT", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    problems = output_file_problems("--json", args.json) if args.json else []
    if problems:  # checked before the scoring, whose time would otherwise be lost
        parser.error("; ".join(problems))
    try:
        scores = measure_scores(args.ref_file, args.pred_file, meteor=not args.no_meteor)
    except (ValueError, OSError, RuntimeError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print("SCORES:\n==============")
    print(format_scores(scores))
    if args.json:
        write_json(args.json, scores)


if __name__ == "__main__":
    sys.exit(run_stoppable(main))
