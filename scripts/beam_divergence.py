#!/usr/bin/env python
"""Why do the two backends' beam searches differ? Per differing query: the first parting step,
the two competing tokens and the score margin (alignment/beam_report.py).

  python scripts/beam_divergence.py --data test.jsonl --torch_checkpoint runs/x/torch/model.150.pt \
      --jittor_checkpoint runs/x/jittor/model.150.pt --torch_predictions runs/x/torch/predict.jsonl \
      --jittor_predictions runs/x/jittor/predict.jsonl --lora_dim 4 --lora_alpha 32 --beam 10 \
      --eval_len 48 --seq_len 144 --out DIR
Writes DIR/beam_divergence.json and DIR/report_section.md.
"""
import argparse
import sys

from alignment.beam_report import from_runs
from shared.runtime.arg_types import non_negative_int, positive_int
from shared.runtime.atomic import atomic_group
from shared.decode.beam_spec import add_beam_settings_args, settings_from_args
from shared.runtime.entry_point import run_script
from shared.runtime.preflight import check_outputs, input_file_problems, output_dir_problems
from shared.model.lora_settings import resolve_lora_args
from shared.train.train_args import add_model_shape_args
from shared.runtime.config_parser import ConfigArgumentParser


def build_parser():
    p = ConfigArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the encoded jsonl the searches ran on")
    p.add_argument("--seq_len", type=positive_int, default=512,
                   help="as given to gpt2_beam.py: queries are cut to their last seq_len - eval_len tokens")
    add_beam_settings_args(p)
    add_model_shape_args(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    for backend in ("torch", "jittor"):
        p.add_argument(f"--{backend}_checkpoint", required=True, help=f"the {backend} run's weights")
        p.add_argument(f"--{backend}_predictions", required=True,
                       help=f"the {backend} run's gpt2_beam.py prediction file")
    p.add_argument("--max_queries", type=non_negative_int, default=20, help="differing queries to analyse")
    p.add_argument("--out", required=True)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    model_args = argparse.Namespace(**{k: getattr(args, k) for k in (
        "model_card", "n_embd", "n_layer", "n_head", "lora_dim", "lora_alpha", "device")})
    return run_script(lambda: run(args, model_args))


def run(args, model_args):
    inputs = ("data", "torch_checkpoint", "jittor_checkpoint", "torch_predictions",
              "jittor_predictions")
    check_outputs([p for flag in inputs for p in input_file_problems(f"--{flag}", getattr(args, flag))]
                  + output_dir_problems("--out", args.out))
    # --lora_dim/--lora_alpha left out: the checkpoints' stored LoRA settings
    resolve_lora_args(model_args, paths=[args.torch_checkpoint, args.jittor_checkpoint])
    with atomic_group(args.out):  # its files, or none
        document = from_runs(model_args, {"torch": args.torch_checkpoint, "jittor": args.jittor_checkpoint},
                             {"torch": args.torch_predictions, "jittor": args.jittor_predictions},
                             args.data, settings_from_args(args), args.seq_len, args.out,
                             args.max_queries)
    print(f"{document['differing']} of {document['queries']} queries differ; "
          f"{document['analysed']} analysed: {document['summary']['causes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
