#!/usr/bin/env python
"""Move weights between this project and the Hugging Face ecosystem (no framework needed).

  # a trained LoRA run -> a peft adapter folder and a transformers GPT-2 folder (LoRA merged);
  # the checkpoint carries its rank and alpha (--lora_dim/--lora_alpha only for files without)
  python scripts/export_hf.py export --init_checkpoint trained/model.600.pt \
      --model_card gpt2.md --peft_dir hf/adapter --hf_dir hf/model
  # the base model alone, for peft's base_model_name_or_path
  python scripts/export_hf.py export --init_checkpoint base.safetensors --hf_dir hf/base
  # a peft adapter (LoRA on c_attn) -> this project's LoRA checkpoint (microsoft/LoRA layout),
  # its rank and alpha (per layer with rank_pattern/alpha_pattern/layers_to_transform) stored in it
  python scripts/export_hf.py import --peft_dir hf/adapter --model_card gpt2.md --out lora.pt
A transformers GPT-2 folder (or OpenAI's TF GPT-2 folder) needs no import: --init_checkpoint DIR
reads it, with its config.json (hparams.json) giving the model's shape.
"""
import argparse
import sys

from shared.runtime.atomic import atomic_group
from shared.model.checkpoint import load_for_model, save_checkpoint
from shared.runtime.entry_point import run_script
from shared.model.hf_export import export_hf_model, export_peft_adapter, import_peft_adapter
from shared.model.lora_settings import format_alpha
from shared.model.peft_export import (export_prompt_adapter, import_prompt_adapter,
                                      is_prompt_adapter)
from shared.runtime.preflight import check_outputs, output_dir_problems, output_file_problems
from shared.train.train_args import add_model_shape_args, model_config


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="checkpoint -> peft adapter and/or transformers GPT-2")
    add_model_shape_args(e)
    e.add_argument("--init_checkpoint", required=True, help="full weights (any readable layout)")
    e.add_argument("--lora_checkpoint", default=None, help="LoRA-only weights on top")
    e.add_argument("--peft_dir", default=None, help="write the peft adapter here")
    e.add_argument("--hf_dir", default=None, help="write model.safetensors + config.json here")
    e.add_argument("--base_model", default="",
                   help="base_model_name_or_path in adapter_config.json (e.g. the --hf_dir of "
                        "the base model)")
    i = sub.add_parser("import", help="peft adapter -> this project's LoRA checkpoint")
    add_model_shape_args(i)
    i.add_argument("--peft_dir", required=True)
    i.add_argument("--out", required=True, help=".pt (microsoft/LoRA layout) or .safetensors; "
                   "it stores the adapter's LoRA settings")
    return p


def export(args):
    config = model_config(args)
    state = dict(load_for_model(args.init_checkpoint, config))
    if args.lora_checkpoint:
        state.update(load_for_model(args.lora_checkpoint, config, base_loaded=True))
    written = []
    if args.peft_dir and config.peft is not None:  # prompt / ptuning / prefix (others: refused)
        written += export_prompt_adapter(state, config, args.peft_dir, args.base_model)
    elif args.peft_dir:
        written += export_peft_adapter(state, config, args.peft_dir, args.base_model)
    if args.hf_dir:
        written += export_hf_model(state, config, args.hf_dir)
    return written


def import_adapter(args):
    for flag in ("lora_dim", "lora_alpha"):
        if getattr(args, flag) is not None:
            raise ValueError(f"import: --{flag} is not used (the adapter's adapter_config.json "
                             f"gives the LoRA settings)")
    args.lora_dim = 0  # the base model's shape only
    config = model_config(args)
    if is_prompt_adapter(args.peft_dir):
        state, peft = import_prompt_adapter(args.peft_dir, config)
        save_checkpoint(args.out, state, peft_settings=peft)
        print(f"peft {peft.method} adapter, {peft.num_virtual_tokens} virtual tokens (stored in "
              f"{args.out}): load it with --lora_checkpoint {args.out} on top of the base model")
        return [args.out]
    state, settings = import_peft_adapter(args.peft_dir, config)
    save_checkpoint(args.out, state, lora_settings=settings)
    per_layer = ", per layer: rank " + str(settings.get("lora_layer_dims", "-")) + ", alpha " \
        + str(settings.get("lora_layer_alphas", "-")) if len(settings) > 3 else ""
    print(f"LoRA rank {settings['lora_dim']}, alpha {format_alpha(settings['lora_alpha'])}"
          f"{per_layer} (stored in {args.out}): load it with --lora_checkpoint {args.out} on "
          f"top of the base model")
    return [args.out]


def run(args):
    """The command's work; every output is checked first and written all-or-nothing."""
    if args.command == "export":
        folders = [(flag, path) for flag, path in (("--peft_dir", args.peft_dir),
                                                   ("--hf_dir", args.hf_dir)) if path]
        check_outputs([p for flag, path in folders for p in output_dir_problems(flag, path)])
        with atomic_group(*[path for _, path in folders]):
            written = export(args)
    else:
        check_outputs(output_file_problems("--out", args.out))
        with atomic_group():
            written = import_adapter(args)
    for path in written:
        print(f"wrote {path}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export" and not (args.peft_dir or args.hf_dir):
        parser.error("export: give --peft_dir and/or --hf_dir")
    return run_script(lambda: run(args), parser, errors=(KeyError,))


if __name__ == "__main__":
    sys.exit(main())
