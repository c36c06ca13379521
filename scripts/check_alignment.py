#!/usr/bin/env python
"""Load one checkpoint into both backends and compare what they compute on real batches.

For each of `--batches` validation batches: logits, the masked loss, and the gradients of every
trainable parameter (those the checkpoint's --peft method trains: LoRA weights when --lora_dim >
0, a PEFT method's own, all weights otherwise), with dropout off.
Prints the max abs differences and relative L2 distances (shared/runtime/differences.py) and writes them
as JSON. Exit code 1 when a difference exceeds its tolerance (fp32 defaults: logits 1e-3 abs,
loss 1e-5 rel, grads 1e-4 abs).
  python scripts/check_alignment.py --init_checkpoint base.safetensors \
      --lora_checkpoint run/model.100.pt --data valid.jsonl --lora_dim 4 --n_embd 128 ...
"""
import sys


from shared.runtime.arg_types import fraction_below_one, non_negative_float, positive_int
from shared.runtime.atomic import write_json
from shared.text.batching import FTDataset
from shared.runtime.differences import agree, difference
from shared.model.config import seq_len_problem
from shared.model.params import trains
from shared.runtime.environment import default_device
from shared.runtime.preflight import input_file_problems, output_file_problems
from shared.runtime.entry_point import run_stoppable
from shared.train.train_args import add_model_shape_args, model_config
from shared.runtime.config_parser import ConfigArgumentParser


def build_parser():
    p = ConfigArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init_checkpoint", required=True, help="full checkpoint (any layout)")
    p.add_argument("--lora_checkpoint", default=None, help="LoRA-only checkpoint loaded after it")
    p.add_argument("--data", required=True, help="encoded jsonl (gpt2_encode.py output)")
    add_model_shape_args(p)
    p.add_argument("--seq_len", type=positive_int, default=512)
    p.add_argument("--batch_size", type=positive_int, default=4)
    p.add_argument("--batches", type=positive_int, default=2)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--label_smooth", type=fraction_below_one, default=0.0)
    p.add_argument("--json", default=None, help="write the differences here")
    p.add_argument("--logits_atol", type=non_negative_float, default=1e-3)
    p.add_argument("--loss_rtol", type=non_negative_float, default=1e-5)
    p.add_argument("--grad_atol", type=non_negative_float, default=1e-4)
    return p


def loaded_model(backend, config, args):
    """The checkpoint(s) of `args` in `backend`'s model, the method's parameters trainable."""
    model = backend.GPT2LMModel(config)
    model.load_weight(args.init_checkpoint)
    if args.lora_checkpoint:
        model.load_weight(args.lora_checkpoint)
    backend.lora.mark_trainable(model, trains(config))
    return model


def torch_side(config, args, batches):
    import torch_impl
    from alignment.harness import torch_grads
    model = loaded_model(torch_impl, config, args)
    model.set_attention("math")
    model.to(args.device).eval()
    out = []
    for batch in batches:
        loss, grads, logits = torch_grads(model, batch["input"], batch["target"], batch["mask"],
                                          args.label_smooth, args.device, logits=True)
        out.append((logits, loss, {n: g for n, g in grads.items() if g is not None}))
    return out


def jittor_side(config, args, batches):
    import jittor_impl
    from alignment.harness import jittor_grads
    from jittor_impl import runtime
    runtime.use_device(args.device)
    model = loaded_model(jittor_impl, config, args)
    model.train()  # jittor's eval() stops every gradient; LoRA dropout is 0 here anyway
    out = []
    for batch in batches:
        loss, grads, logits = jittor_grads(model, batch["input"], batch["target"], batch["mask"],
                                           args.label_smooth, logits=True)
        out.append((logits, loss, grads))
    runtime.use_device("cpu")
    return out


def check(args):
    args.device = args.device or default_device()
    args.lora_dropout = 0.0
    config = model_config(args)
    problem = seq_len_problem(args.seq_len, config)
    if problem:
        raise SystemExit(f"check_alignment.py: error: {problem}")
    dataset = FTDataset.from_file(args.data, args.batch_size, args.seq_len)
    batches = [b for _, b in zip(range(args.batches), dataset.eval_batches())]
    t_side, j_side = torch_side(config, args, batches), jittor_side(config, args, batches)
    result = {"device": args.device, "batches": len(batches), "batch_size": args.batch_size,
              "logits_max_abs": 0.0, "logits_rel_l2": 0.0, "loss_max_abs": 0.0,
              "loss_rel_l2": 0.0, "grad_max_abs": 0.0, "grad_rel_l2": 0.0,
              "grad_params": 0, "losses_torch": [], "losses_jittor": []}

    tolerances = {"logits": dict(atol=args.logits_atol), "loss": dict(rel_l2=args.loss_rtol),
                  "grad": dict(atol=args.grad_atol)}
    agreed = []

    def keep_worst(key, torch_value, jittor_value):
        """The largest max |a - b| and relative L2 distance (torch is the reference) so far, and
        whether this pair agrees within its tolerance (shared.runtime.differences.agree)."""
        d = difference(jittor_value, torch_value)
        result[key + "_max_abs"] = max(result[key + "_max_abs"], d.max_abs)
        result[key + "_rel_l2"] = max(result[key + "_rel_l2"], d.rel_l2)
        agreed.append(agree(jittor_value, torch_value, **tolerances[key]))

    for (tl, tloss, tg), (jl, jloss, jg) in zip(t_side, j_side):
        keep_worst("logits", tl, jl)
        keep_worst("loss", tloss, jloss)
        result["losses_torch"].append(tloss)
        result["losses_jittor"].append(jloss)
        if sorted(tg) != sorted(jg):
            raise RuntimeError(f"trainable parameters differ: {sorted(set(tg) ^ set(jg))}")
        result["grad_params"] = len(tg)
        for name in tg:
            keep_worst("grad", tg[name], jg[name])
    result["tolerances"] = {"logits_atol": args.logits_atol, "loss_rtol": args.loss_rtol,
                            "grad_atol": args.grad_atol}
    result["passed"] = all(agreed)
    return result


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = [p for flag in ("init_checkpoint", "lora_checkpoint", "data") if getattr(args, flag)
                for p in input_file_problems(f"--{flag}", getattr(args, flag))]
    problems += output_file_problems("--json", args.json) if args.json else []
    if problems:  # before both frameworks load
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    result = check(args)
    for key in ("logits", "loss", "grad"):
        print(f"{key:7s} max abs {result[key + '_max_abs']:.3e}   rel L2 {result[key + '_rel_l2']:.3e}")
    print(f"{result['grad_params']} trainable tensors, {result['batches']} batches of "
          f"{result['batch_size']} on {result['device']}: {'PASS' if result['passed'] else 'FAIL'}")
    if args.json:
        write_json(args.json, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(run_stoppable(main))
