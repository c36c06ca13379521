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
import argparse
import sys

from alignment import diff_layers
from alignment.planted_bugs import MODEL_BUGS
from shared.train_args import add_model_shape_args, default_device, model_config


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init_checkpoint", default=None, help="full checkpoint (any layout)")
    p.add_argument("--lora_checkpoint", default=None, help="LoRA-only checkpoint loaded after it")
    add_model_shape_args(p)
    p.add_argument("--data", required=True, help="encoded jsonl (gpt2_encode.py output)")
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--batches", type=int, default=1, help="validation batches to trace")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--label_smooth", type=float, default=0.0)
    p.add_argument("--random_seed", type=int, default=1)
    p.add_argument("--plant", default=None, choices=sorted(MODEL_BUGS), metavar="BUG",
                   help="plant a catalogued bug in the Jittor twin (demonstration)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--exit_zero", action="store_true",
                   help="exit 0 also when a tensor fails (work.sh reports the result instead)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.device = args.device or default_device()
    args.lora_dropout = 0.0
    try:
        document = diff_layers.from_checkpoints(
            model_config(args), args.data, args.out, args.init_checkpoint, args.lora_checkpoint,
            args.random_seed, args.seq_len, args.batch_size, args.batches, args.precision,
            args.device, args.label_smooth, args.plant)
    except ValueError as exc:  # bad input (a checkpoint, the data, LoRA flags): status 2
        print(f"diff_layers.py: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(diff_layers.terminal_summary(document)))
    print(f"wrote {args.out}/diff_layers.md, .json, .png")
    return 0 if document["passed"] or args.exit_zero else 1


if __name__ == "__main__":
    sys.exit(main())
