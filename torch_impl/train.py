# framework: docstring lines 5-7
"""The PyTorch side of training (twin: jittor_impl/train.py); the loop is shared/train/trainer.py.

A backend owns the model and optimizer on its device and does what depends on the framework:
forward/backward of a micro-batch, the optimizer update, evaluation losses, fetching values,
and the weights/optimizer state as numpy for backend-neutral checkpoints. Under torchrun
(shared/train/data_parallel.py) it joins the process group (gloo on CPU, NCCL on GPUs) and
trains through DistributedDataParallel, which averages the gradients over the ranks.
"""
import contextlib
import datetime  # framework

import numpy as np
import torch  # framework
import torch.distributed as dist  # framework
from torch.nn.parallel import DistributedDataParallel  # framework

from shared.model.checkpoint import load_for_model
from shared.train.dropout import SharedDropout
from shared.train.seeding import step_seed
from shared.model.params import optimizer_groups, trains
from shared.train.data_parallel import dropout_rows, processes_of

from .frozen_weights import store_frozen_weights  # framework
# the reference AdamW and clipping, one kernel per operation for all tensors (fused_optim.py)
from .fused_optim import ForeachAdamW as AdamW, foreach_grad_norm_and_clip as grad_norm_and_clip
from .sampler import generate
from .lora import mark_only_lora_as_trainable, mark_trainable, set_shared_dropout
from .model import GPT2LMModel
from .ops import DEFAULT_ATTENTION
from .optim import set_lr

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # framework


class TorchBackend:  # framework
    name = "torch"  # framework

    def __init__(self, config, args):
        if args.device == "cuda" and not torch.cuda.is_available():  # framework
            raise RuntimeError("--device cuda requested but torch sees no CUDA GPU")  # framework
        self.processes = processes_of(args)
        self.device, self.seed = self.process_device(args.device), args.random_seed  # framework
        self.config = config
        self.metrics = {}  # the last batch's task metrics (device scalars), see take_metrics
        self.model = self.build_model(config, args)
        self.shared_dropout = SharedDropout(config.lora_dropout, args.random_seed, dropout_rows(args)) if args.shared_dropout else None
        set_shared_dropout(self.model, self.shared_dropout)
        self.model.set_attention(args.attn or DEFAULT_ATTENTION)
        self.model.to(self.device)  # framework
        self.autocast_dtype = AUTOCAST_DTYPES.get(args.precision)  # framework
        # LoRA under mixed precision: frozen matrices cast once, not in every step
        self.exact_frozen = {}
        if self.autocast_dtype is not None and config.lora_attn_dim > 0 and self.device.type == "cuda":  # framework
            self.exact_frozen = store_frozen_weights(self.model, self.autocast_dtype)  # framework
        # the model, or under several processes its data-parallel wrapper
        self.trained = self.join_processes(self.model, args)  # framework
        # what forward passes run through: the model, or its torch.compile'd form; on CUDA
        # "reduce-overhead" (the default there) also replays each step's kernels as CUDA graphs
        mode = getattr(args, "compile_mode", None)  # framework
        self.compiled = bool(getattr(args, "compile", False)) or mode is not None  # framework
        if self.compiled:  # framework
            mode = mode or ("reduce-overhead" if self.device.type == "cuda" else "default")  # framework
            self.forward = torch.compile(self.trained, mode=mode)  # framework
        else:  # framework
            self.forward = self.trained  # framework
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        groups = optimizer_groups(list(self.params), args.weight_decay, args.no_decay_bias)
        self.optimizer = AdamW([{"params": [self.params[n] for n in names], "weight_decay": wd}
                                for names, wd in groups],
                               lr=args.lr, betas=(args.adam_beta1, args.adam_beta2),
                               eps=args.adam_epislon, weight_decay=args.weight_decay,
                               correct_bias=args.correct_bias)
        self.scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None  # framework

    def build_model(self, config, args):
        """The model this backend trains, its trainable weights marked (other tasks override)."""
        model = GPT2LMModel(config, seed=args.random_seed)
        if args.init_checkpoint:
            model.load_weight(args.init_checkpoint)
        if config.lora_attn_dim > 0:
            mark_only_lora_as_trainable(model)
        elif config.peft is not None:  # --peft top2/bitfit/adapter/prompt/ptuning/prefix
            mark_trainable(model, trains(config))
        return model

    def process_device(self, device):  # framework
        """The device of this process: under several processes on GPUs, one GPU per rank."""  # framework
        if device == "cuda" and self.processes.distributed:  # framework
            torch.cuda.set_device(self.processes.local_rank)  # framework
            return torch.device("cuda", self.processes.local_rank)  # framework
        return torch.device(device)  # framework

    def join_processes(self, model, args):
        # framework: docstring lines 1-2
        """Under torchrun: join the process group, return the model in DistributedDataParallel
        (it averages the gradients over the ranks in backward); else the model itself."""
        if not self.processes.distributed:
            return model
        if self.processes.launcher != "torchrun":  # framework
            raise RuntimeError(f"--backend torch trains on several processes under torchrun, "  # framework
                               f"not {self.processes.launcher}")
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",  # framework
                                timeout=datetime.timedelta(seconds=args.dist_timeout))  # framework
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None,  # framework
                                       forward_sync_buffers=False)  # constant buffers: no collective per forward  # framework

    def leave_processes(self):
        """Leave the process group (after training, on every rank)."""  # framework
        if self.processes.distributed and dist.is_initialized():  # framework
            dist.destroy_process_group()  # framework

    def all_reduce(self, values):
        """The sum over ranks of a float64 vector (host values in, numpy out)."""
        total = torch.tensor(np.asarray(values, dtype=np.float64), device=self.device)  # framework
        dist.all_reduce(total)  # framework
        return total.cpu().numpy()  # framework

    def gradient_sync(self, sync):
        # framework: docstring lines 1-2
        """No gradient averaging inside an accumulation window (DDP's no_sync); the update's
        micro-batch averages the accumulated sum."""
        if sync or not self.processes.distributed:  # framework
            return contextlib.nullcontext()
        return self.trained.no_sync()  # framework

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,  # framework
                              enabled=self.autocast_dtype is not None)  # framework

    def to_device(self, batch):
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)  # framework
                for k, v in batch.items()}  # framework

    def set_step(self, step):
        torch.manual_seed(step_seed(self.seed, step))  # framework
        if self.shared_dropout is not None:
            self.shared_dropout.set_step(step)

    def forward_backward(self, batch, loss_scale, label_smooth, sync=True):
        """Accumulate the gradients of one micro-batch; return its (unscaled) loss on device.
        `sync`: under several processes, average the gradients over the ranks now (the
        micro-batch before an update)."""
        self.model.train()
        if self.compiled:  # a pending gradient may live in CUDA-graph memory the next replay reuses  # framework
            for p in self.params.values():  # framework
                if p.grad is not None:  # framework
                    p.grad = p.grad.clone()  # framework
        data = self.to_device(batch)
        with self.gradient_sync(sync):
            with self.autocast():
                loss = self.batch_loss(data, label_smooth)
            scaled = loss * loss_scale  # framework
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()  # framework
        # a CUDA-graph replay reuses its output memory: keep a copy of the loss
        return loss.detach().clone() if self.compiled else loss.detach()  # framework

    def update(self, lr, clip):
        """Clip, step with learning rate `lr`, zero the gradients; return the gradient norm."""
        set_lr(self.optimizer, lr)
        if self.scaler:  # framework
            self.scaler.unscale_(self.optimizer)  # framework
        grad_norm = grad_norm_and_clip(self.optimizer, clip)
        if self.scaler:  # framework
            self.scaler.step(self.optimizer)  # framework
            self.scaler.update()  # framework
        else:  # framework
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # framework
        return grad_norm

    @torch.no_grad()  # framework
    def eval_loss(self, batch):
        self.model.eval()
        data = self.to_device(batch)
        with self.autocast():  # framework
            loss = self.batch_loss(data)
        return loss.clone() if self.compiled else loss  # framework

    def batch_loss(self, data, label_smooth=0.0):
        """The loss of one batch on device (the language-model loss; other tasks override)."""
        _, loss = self.forward(data["input"], lm_labels=data["target"], lm_mask=data["mask"],
                               label_smooth=label_smooth)
        return loss

    def take_metrics(self):
        """The metrics the last batch_loss left ({name: device scalar}, e.g. DPO's rewards; none
        for the language model), handed over once."""
        metrics, self.metrics = self.metrics, {}
        return metrics

    def fetch(self, values):
        """Device scalars -> Python floats in one transfer (the loop's only host sync)."""  # framework
        if not values:
            return []
        return torch.stack([v.float() for v in values]).cpu().tolist()  # framework

    def sample(self, prompt_ids, settings, seed, num_samples=1):
        """Sampled continuations from the model being trained (shared/decode/sampling.py's draws)."""
        return generate(self.model, prompt_ids, settings, seed, num_samples)

    def parameter_counts(self):
        """(trainable, all) parameters of the model, as peft's print_trainable_parameters."""
        sizes = {n: int(np.prod(p.shape)) for n, p in self.model.named_parameters()}
        return sum(sizes[n] for n in self.params), sum(sizes.values())

    def is_out_of_memory(self, exc):
        return isinstance(exc, torch.cuda.OutOfMemoryError)  # framework

    # ------------------------------------------------------------- state for checkpoints
    def state_numpy(self, lora_only):
        if lora_only and self.config.peft is not None:  # a PEFT method's trained weights
            return {n: v for n, v in self.model.state_dict_numpy().items() if n in self.params}
        state = self.model.state_dict_numpy(lora_only=lora_only)
        if not lora_only:  # frozen weights as loaded, not their bf16 copies
            state.update(self.exact_frozen)
        return state

    def load_trainable(self, state):
        self.model.load_state_numpy(state)
        for name in self.exact_frozen.keys() & state.keys():  # keep the exact copies current
            self.exact_frozen[name] = np.array(state[name], dtype=np.float32)

    def load_trainable_checkpoint(self, path):
        """Resume: the trainable weights saved at `path`, checked against the model."""
        self.load_trainable(load_for_model(path, self.config, base_loaded=True))

    def optimizer_state(self):
        return self.optimizer.state_numpy(self.params)

    def load_optimizer_state(self, arrays):
        self.optimizer.load_state_numpy(self.params, arrays)
