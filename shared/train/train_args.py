"""Command-line arguments of the training script, shared by both backends.

Names, meanings and defaults follow microsoft/LoRA `examples/NLG/src/gpt2_ft.py` (and the
`add_optimizer_params`/`add_gpu_params` it uses), so its commands run here unchanged apart from
`--backend`. Everything is checked before any work starts.
"""
import os

from shared.runtime.arg_types import (ArgumentProblem, fraction_below_one, non_negative_float,
                                      non_negative_int, positive_float, positive_int, seed_int)
from shared.model.config import MODEL_CARDS, GPT2Config, seq_len_problem, shape_flag_problems
from shared.runtime.environment import default_device, device_problems
from shared.model.lora_settings import LoRASettingsError, resolve_lora_args
from shared.model.peft_methods import (add_peft_args, flag_problems as peft_flag_problems,
                                       positions_problem, resolve_peft_args, settings_from_args)
from shared.runtime.preflight import output_dir_problems
from shared.model.checkpoint_files import checkpoint_path_problem
from shared.model.pretrained import checkpoint_config
from shared.train.schedule import SCHEDULES
from shared.runtime.config_parser import ConfigArgumentParser
from shared.train.data_parallel import DEFAULT_TIMEOUT_S, setup_processes

BACKENDS = ("torch", "jittor")
PRECISIONS = ("fp32", "bf16", "fp16")
# torch.compile's modes; without --compile_mode: reduce-overhead on CUDA, default on the CPU
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_model_shape_args(parser):
    parser.add_argument("--model_card", default="gpt2.sm", help="gpt2.sm | gpt2.md | gpt2.lg")
    parser.add_argument("--n_embd", type=int, default=None, help="override the card's n_embd")
    parser.add_argument("--n_layer", type=int, default=None, help="override the card's n_layer")
    parser.add_argument("--n_head", type=int, default=None, help="override the card's n_head")
    parser.add_argument("--lora_dim", type=non_negative_int, default=None,
                        help="LoRA rank r (0: no LoRA); default: the rank stored in the "
                             "checkpoint, else 0")
    parser.add_argument("--lora_alpha", type=positive_float, default=None,
                        help="LoRA alpha (scaling = alpha / r; any number, e.g. 2.5); default: "
                             "the alpha stored in the checkpoint, else 128")


def add_launcher_args(parser):
    """Flags that microsoft/LoRA's commands pass (`--platform local`, and `--local_rank` from
    torch.distributed.launch); accepted so those commands run unchanged. Several processes come
    from the launcher's environment (torchrun, mpirun: shared/train/data_parallel.py)."""
    parser.add_argument("--platform", default="local", choices=["local"],
                        help="accepted for compatibility: 'local' runs one process, or several "
                             "under torchrun (torch) / mpirun (jittor)")
    parser.add_argument("--local_rank", type=int, default=0,
                        help="accepted for compatibility (the launcher's LOCAL_RANK is used)")


def build_parser(data_args=True, description=None):
    """`data_args=False`: no --train_data/--valid_data (tasks that add their own data flags)."""
    p = ConfigArgumentParser(description=description or "GPT-2 + LoRA fine-tuning "
                             "(microsoft/LoRA gpt2_ft.py arguments) with a PyTorch or Jittor backend")
    p.add_argument("--backend", required=True, choices=BACKENDS)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default: cuda when available, else cpu")
    if data_args:
        p.add_argument("--train_data", required=True, help="encoded training jsonl (gpt2_encode.py)")
        p.add_argument("--valid_data", required=True, help="encoded validation jsonl")
    p.add_argument("--train_batch_size", type=positive_int, default=8,
                   help="per process: under N processes the global batch is N x this")
    p.add_argument("--valid_batch_size", type=positive_int, default=4)
    p.add_argument("--grad_acc", type=positive_int, default=1, help="gradient accumulation steps")
    p.add_argument("--clip", type=non_negative_float, default=0.0, help="gradient clip (0: none)")
    p.add_argument("--seq_len", type=positive_int, default=512)
    add_model_shape_args(p)
    add_peft_args(p)
    add_launcher_args(p)
    p.add_argument("--dist_timeout", type=positive_float, default=DEFAULT_TIMEOUT_S,
                   help="under several processes: seconds a step may wait for the other ranks "
                        "before this one stops, naming itself")
    p.add_argument("--init_checkpoint", default=None, help="pretrained checkpoint (HF GPT-2 "
                   "file or folder, whose config.json gives the shape; OpenAI's TF GPT-2 folder; "
                   "microsoft/LoRA; or this project's .safetensors/.npz); default: seeded init")
    p.add_argument("--lora_dropout", type=fraction_below_one, default=0.0)
    p.add_argument("--label_smooth", type=fraction_below_one, default=0.0)
    p.add_argument("--log_interval", type=positive_int, default=100, help="steps between log lines")
    p.add_argument("--eval_interval", type=positive_int, default=2000)
    p.add_argument("--save_interval", type=positive_int, default=500)
    p.add_argument("--work_dir", default=os.getenv("PT_OUTPUT_DIR", "gpt2_model"))
    p.add_argument("--random_seed", type=seed_int, default=10)
    # optimizer (add_optimizer_params)
    p.add_argument("--lr", type=positive_float, default=0.00001)
    p.add_argument("--weight_decay", type=non_negative_float, default=0.01)
    p.add_argument("--correct_bias", action="store_true", help="correct Adam bias terms")
    p.add_argument("--adam_epislon", type=positive_float, default=1e-6, help="Adam epsilon (sic)")
    p.add_argument("--no_decay_bias", action="store_true",
                   help="no weight decay on biases and LayerNorm weights")
    p.add_argument("--adam_beta1", type=fraction_below_one, default=0.9)
    p.add_argument("--adam_beta2", type=fraction_below_one, default=0.98)
    p.add_argument("--scheduler", default="linear", choices=SCHEDULES)
    p.add_argument("--max_step", type=positive_int, default=None)
    p.add_argument("--max_epoch", type=positive_int, default=None)
    p.add_argument("--warmup_step", type=non_negative_int, default=0)
    # ours
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32, or mixed precision on GPUs (bf16 autocast; fp16 with loss scaling)")
    p.add_argument("--fp16", action="store_true", help="reference flag: same as --precision fp16")
    p.add_argument("--shared_dropout", action="store_true",
                   help="draw LoRA dropout masks from one backend-neutral generator, so torch "
                        "and jittor runs match step for step with dropout on")
    p.add_argument("--attn", default=None, choices=["math", "sdpa"],
                   help="attention: the reference's formula (math) or the fused kernel (sdpa, "
                        "the default: cuDNN's in torch; in jittor its flash kernel under mixed "
                        "precision on CUDA, the exact formula in fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch backend: run the model through torch.compile (fuses the "
                        "element-wise work, and on CUDA replays each step as CUDA graphs: "
                        "mode reduce-overhead; the first steps compile)")
    p.add_argument("--compile_mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile's mode (implies --compile): max-autotune also times "
                        "Triton's kernels for every product shape and fuses more into them "
                        "(compiles for minutes); default: reduce-overhead on CUDA, default on "
                        "the CPU")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --work_dir")
    p.add_argument("--max_eval_batches", type=positive_int, default=None,
                   help="evaluate on at most this many validation batches")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write the training curves as TensorBoard events into DIR")
    return p


def lora_flag_problems(args) -> list:
    """Resolve --lora_dim/--lora_alpha against the checkpoints' stored LoRA settings; the
    problems as lines (the flags fall back to their defaults so the other checks can run)."""
    try:
        resolve_lora_args(args)
    except LoRASettingsError as exc:
        args.lora_dim = 0 if args.lora_dim is None else args.lora_dim
        args.lora_alpha = 128.0 if args.lora_alpha is None else args.lora_alpha
        return [str(exc)]
    return []


def validate(args, data_files=True):
    """Fail before any work on arguments that cannot run; fills derived values.
    `data_files=False`: the task reads its own data (pretraining, classification)."""
    if args.fp16:
        args.precision = "fp16"
    problems = []
    if args.model_card not in MODEL_CARDS:
        problems.append(f"unknown --model_card {args.model_card!r}; choose one of "
                        f"{sorted(MODEL_CARDS)}")
    for name in ("train_data", "valid_data") if data_files else ():
        path = getattr(args, name)
        if not os.path.isfile(path):
            problems.append(f"--{name} {path}: file not found")
    if args.init_checkpoint:
        problems.append(checkpoint_path_problem("--init_checkpoint", args.init_checkpoint))
    problems += lora_flag_problems(args)
    problems += peft_flag_problems(resolve_peft_args(args))
    for name in ("train_batch_size", "valid_batch_size", "grad_acc", "seq_len", "log_interval",
                 "eval_interval", "save_interval"):
        if getattr(args, name) <= 0:
            problems.append(f"--{name} must be positive, got {getattr(args, name)}")
    if args.max_step is None and args.max_epoch is None:
        problems.append("give --max_step or --max_epoch")
    if args.max_step is not None and args.max_step <= 0:
        problems.append(f"--max_step must be positive, got {args.max_step}")
    if args.max_epoch is not None and args.max_epoch <= 0:
        problems.append(f"--max_epoch must be positive, got {args.max_epoch}")
    if args.warmup_step < 0:
        problems.append(f"--warmup_step must be >= 0, got {args.warmup_step}")
    if args.max_step is not None and args.warmup_step > args.max_step:
        problems.append(f"--warmup_step {args.warmup_step} > --max_step {args.max_step}")
    if not args.lr > 0:  # NaN too
        problems.append(f"--lr must be positive, got {args.lr}")
    if not 0.0 <= args.lora_dropout < 1.0:
        problems.append(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if not 0.0 <= args.label_smooth < 1.0:
        problems.append(f"--label_smooth must be in [0, 1), got {args.label_smooth}")
    if args.lora_dim < 0:
        problems.append(f"--lora_dim must be >= 0, got {args.lora_dim}")
    args.compile = args.compile or args.compile_mode is not None
    if args.compile and args.backend == "jittor":
        flag = "--compile_mode" if args.compile_mode else "--compile"
        problems.append(f"{flag} exists for the torch backend only (Jittor fuses by itself)")
    if args.device is None:
        args.device = default_device()
    if args.precision != "fp32" and args.device != "cuda":
        problems.append(f"--precision {args.precision} needs --device cuda (CPU runs in fp32)")
    problems += device_problems(args.device)
    problems += output_dir_problems("--work_dir", args.work_dir)
    problems += shape_flag_problems(args.n_embd, args.n_layer, args.n_head, args.model_card)
    problems += setup_processes(args)  # under N processes: the global batch is N x the flag's
    problems = [p for p in problems if p]
    if not problems:
        try:
            config = model_config(args)
            problems += [seq_len_problem(args.seq_len, config),
                         positions_problem(config, args.seq_len)]
            if args.init_checkpoint and os.path.isfile(args.init_checkpoint):
                from shared.model.checkpoint import method_problem
                from shared.model.lora_settings import read_lora_settings
                problems.append(method_problem(args.init_checkpoint,
                                               read_lora_settings(args.init_checkpoint), config))
        except ValueError as exc:
            problems.append(str(exc))
        problems = [p for p in problems if p]
    if problems:
        raise ArgumentProblem("bad arguments:\n  " + "\n  ".join(problems))
    return args


def model_config(args) -> GPT2Config:
    """The model the flags name: from --init_checkpoint's config.json / hparams.json where its
    folder has one (pretrained.py; shape flags must agree with it), else from --model_card and
    the shape flags. --lora_dim/--lora_alpha left out are taken from the LoRA settings stored in
    the checkpoints they name (shared/model/lora_settings.py). Every script that takes
    --init_checkpoint builds its model here."""
    resolve_lora_args(args)
    lora = dict(lora_attn_dim=args.lora_dim, lora_attn_alpha=args.lora_alpha,
                lora_dropout=getattr(args, "lora_dropout", 0.0),
                lora_layer_dims=args.lora_layer_dims, lora_layer_alphas=args.lora_layer_alphas,
                peft=settings_from_args(resolve_peft_args(args)))
    found = checkpoint_config(getattr(args, "init_checkpoint", None))
    if found is not None:
        return found.model_config(n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                                  **lora)
    return GPT2Config.from_model_card(
        args.model_card, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head, **lora)
