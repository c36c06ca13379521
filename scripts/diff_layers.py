#!/usr/bin/env python
"""Where do the twins part? One checkpoint in torch, Jittor and float64, traced per submodule.

Takes gpt2_beam.py's checkpoint flags and an encoded jsonl; writes OUT/diff_layers.md,
OUT/diff_layers.json (one record per compared tensor, "first_divergence") and
OUT/diff_layers.png (per-layer error against float64, log scale). Exit code 1 when a tensor
fails the noise-floor rule (alignment/compare.py).
  python scripts/diff_layers.py --init_checkpoint base.safetensors --lora_checkpoint run/model.100.pt \
      --model_card gpt2.md --lora_dim 4 --lora_alpha 32 --data valid.jsonl --out logs/diff-layers
Without --init_checkpoint the model is the seeded initialisation (--random_seed). `--plant NAME`
plants one of alignment/planted_bugs.py's bugs in the Jittor twin, to see a localized failure.
"""
import sys

from alignment import layer_report as diff_layers
from alignment.planted_bugs import MODEL_BUGS
from shared.runtime.arg_types import fraction_below_one, positive_int, seed_int
from shared.model.config import shape_flag_problems
from shared.runtime.entry_point import run_script
from shared.runtime.environment import device_problems
from shared.runtime.preflight import check_outputs, input_file_problems, output_dir_problems
from shared.train.train_args import (add_model_shape_args, default_device, lora_flag_problems,
                                     model_config)
from shared.runtime.config_parser import ConfigArgumentParser


def build_parser():
    p = ConfigArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init_checkpoint", default=None, help="full checkpoint (any layout)")
    p.add_argument("--lora_checkpoint", default=None, help="LoRA-only checkpoint loaded after it")
    add_model_shape_args(p)
    p.add_argument("--data", required=True, help="encoded jsonl (gpt2_encode.py output)")
    p.add_argument("--seq_len", type=positive_int, default=512)
    p.add_argument("--batch_size", type=positive_int, default=4)
    p.add_argument("--batches", type=positive_int, default=1, help="validation batches to trace")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--label_smooth", type=fraction_below_one, default=0.0)
    p.add_argument("--random_seed", type=seed_int, default=1)
    p.add_argument("--plant", default=None, choices=sorted(MODEL_BUGS), metavar="BUG",
                   help="plant a catalogued bug in the Jittor twin (demonstration)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--exit_zero", action="store_true",
                   help="exit 0 also when a tensor fails (work.sh reports the result instead)")
    return p


def argument_problems(args) -> list:
    """What is wrong with the flags, as readable lines (empty when all is well)."""
    problems = [p for flag in ("init_checkpoint", "lora_checkpoint", "data")
                if getattr(args, flag) for p in input_file_problems(f"--{flag}", getattr(args, flag))]
    problems += lora_flag_problems(args)  # --lora_dim/--lora_alpha, from the checkpoints too
    if args.lora_checkpoint and args.lora_dim <= 0:
        problems.append("--lora_checkpoint needs --lora_dim (the rank it was trained with)")
    problems += device_problems(args.device)
    problems += shape_flag_problems(args.n_embd, args.n_layer, args.n_head, args.model_card)
    return problems


def run(args):
    check_outputs(output_dir_problems("--out", args.out))
    document = diff_layers.from_checkpoints(
        model_config(args), args.data, args.out, args.init_checkpoint, args.lora_checkpoint,
        args.random_seed, args.seq_len, args.batch_size, args.batches, args.precision,
        args.device, args.label_smooth, args.plant)
    print("\n".join(diff_layers.terminal_summary(document)))
    print(f"wrote {args.out}/diff_layers.md, .json, .png")
    return 0 if document["passed"] or args.exit_zero else 1


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.device = args.device or default_device()
    args.lora_dropout = 0.0
    problems = argument_problems(args)
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    return run_script(lambda: run(args), parser)


if __name__ == "__main__":
    sys.exit(main())
