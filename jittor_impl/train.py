# framework: docstring lines 5-7
"""The Jittor side of training (twin: torch_impl/train.py); the loop is shared/train/trainer.py.

A backend owns the model and optimizer on its device and does what depends on the framework:
forward/backward of a micro-batch, the optimizer update, evaluation losses, fetching values,
and the weights/optimizer state as numpy for backend-neutral checkpoints. Under mpirun
(shared/train/data_parallel.py) it trains on Jittor's MPI: its optimizer averages the
gradients over the ranks in every backward.
"""
import contextlib

import numpy as np

from shared.model.checkpoint import load_for_model
from shared.train.dropout import SharedDropout
from shared.train.seeding import step_seed
from shared.model.params import optimizer_groups, trains
from shared.train.data_parallel import dropout_rows, processes_of

from . import runtime  # framework
from .frozen_weights import refresh_padded_head, store_frozen_weights  # framework
# the reference AdamW and clipping, two multi-tensor kernels for all tensors (fused_optim.py)
from .fused_optim import ForeachAdamW as AdamW, foreach_grad_norm_and_clip as grad_norm_and_clip
from .sampler import generate
from .lora import mark_only_lora_as_trainable, mark_trainable, set_shared_dropout
from .model import GPT2LMModel
from .ops import DEFAULT_ATTENTION
from .optim import set_lr
from .precision import autocast  # framework
from .runtime import jt  # framework

COMPUTE_DTYPES = {"bf16": "bfloat16"}  # framework


class JittorBackend:  # framework
    name = "jittor"  # framework

    def __init__(self, config, args):
        runtime.use_device(args.device)  # framework
        if args.precision == "fp16":  # framework
            raise ValueError("the jittor backend trains in fp32 or bf16 (--precision bf16); fp16 "  # framework
                             "with loss scaling is available with --backend torch")  # framework
        self.compute_dtype = COMPUTE_DTYPES.get(args.precision)  # framework
        self.processes = processes_of(args)
        self.seed = args.random_seed  # framework
        self.config = config
        self.metrics = {}  # the last batch's task metrics (device scalars), see take_metrics
        self.model = self.build_model(config, args)
        self.shared_dropout = SharedDropout(config.lora_dropout, args.random_seed, dropout_rows(args)) if args.shared_dropout else None
        set_shared_dropout(self.model, self.shared_dropout)
        self.model.set_attention(args.attn or DEFAULT_ATTENTION)
        # the model, or under several processes its data-parallel wrapper
        self.trained = self.join_processes(self.model, args)  # framework
        self.forward = self.trained  # what forward passes run through (no compile step: Jittor fuses)  # framework
        # LoRA under mixed precision: frozen matrices cast once, not in every step
        self.exact_frozen = {}
        if self.compute_dtype is not None and config.lora_attn_dim > 0 and jt.flags.use_cuda:  # framework
            self.exact_frozen = store_frozen_weights(self.model, self.compute_dtype)  # framework
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        groups = optimizer_groups(list(self.params), args.weight_decay, args.no_decay_bias)
        self.optimizer = AdamW([{"params": [self.params[n] for n in names], "weight_decay": wd}
                                for names, wd in groups],
                               lr=args.lr, betas=(args.adam_beta1, args.adam_beta2),
                               eps=args.adam_epislon, weight_decay=args.weight_decay,
                               correct_bias=args.correct_bias)

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

    def join_processes(self, model, args):
        # framework: docstring lines 1-2
        """Under mpirun: check that Jittor runs on its MPI with every rank; the model itself
        (Jittor's optimizer averages the gradients over the ranks in backward)."""
        if not self.processes.distributed:
            return model
        if self.processes.launcher != "mpirun":  # framework
            raise RuntimeError(f"--backend jittor trains on several processes under mpirun, "  # framework
                               f"not {self.processes.launcher}")
        if not jt.in_mpi or jt.world_size != self.processes.world_size:  # framework
            raise RuntimeError(f"Jittor's MPI is off (in_mpi {jt.in_mpi}, world size "  # framework
                               f"{jt.world_size}): install OpenMPI's mpicc "  # framework
                               f"(scripts/install.sh) and keep use_mpi unset or 1")  # framework
        return model  # framework

    def leave_processes(self):
        """Leave the process group (after training, on every rank): MPI ends with the process."""  # framework

    def all_reduce(self, values):
        """The sum over ranks of a float64 vector (host values in, numpy out)."""
        total = jt.array(np.asarray(values, dtype=np.float64))  # framework
        return total.mpi_all_reduce("add").numpy()  # framework

    def gradient_sync(self, sync):
        """Jittor's MPI optimizer averages every backward's gradients: nothing to skip."""  # framework
        return contextlib.nullcontext()

    def autocast(self):
        return autocast(self.compute_dtype)  # framework

    def to_device(self, batch):
        return {k: jt.array(np.ascontiguousarray(v)) for k, v in batch.items()}  # framework

    def set_step(self, step):
        jt.set_seed(step_seed(self.seed, step))  # framework
        if self.shared_dropout is not None:
            self.shared_dropout.set_step(step)

    def forward_backward(self, batch, loss_scale, label_smooth, sync=True):
        """Accumulate the gradients of one micro-batch; return its (unscaled) loss on device.
        `sync`: under several processes, average the gradients over the ranks now (the
        micro-batch before an update)."""
        self.model.train()
        data = self.to_device(batch)
        with self.gradient_sync(sync):
            with self.autocast():
                loss = self.batch_loss(data, label_smooth)
            self.optimizer.backward(loss * loss_scale)  # framework
        loss = loss.detach()  # framework
        jt.sync([loss] + list(self.metrics.values()))  # run the forward now, so its graph is not kept  # framework
        return loss  # framework

    def update(self, lr, clip):
        """Clip, step with learning rate `lr`, zero the gradients; return the gradient norm."""
        set_lr(self.optimizer, lr)
        with self.autocast():  # the fused optimizer follows the step's precision (fused_optim.py)  # framework
            grad_norm = grad_norm_and_clip(self.optimizer, clip)
            self.optimizer.step()
        jt.sync(list(self.params.values()))  # framework
        return grad_norm

    def eval_loss(self, batch):
        self.model.eval()
        data = self.to_device(batch)
        with jt.no_grad(), self.autocast():  # framework
            loss = self.batch_loss(data)
        jt.sync([loss] + list(self.metrics.values()))  # framework
        return loss  # framework

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
        """Lazy scalars -> Python floats in one transfer (the loop's only host sync)."""  # framework
        if not values:
            return []
        return jt.concat([v.float32().reshape(1) for v in values]).numpy().tolist()  # framework

    def sample(self, prompt_ids, settings, seed, num_samples=1):
        """Sampled continuations from the model being trained (shared/decode/sampling.py's draws)."""
        return generate(self.model, prompt_ids, settings, seed, num_samples)

    def parameter_counts(self):
        """(trainable, all) parameters of the model, as peft's print_trainable_parameters."""
        sizes = {n: int(np.prod(p.shape)) for n, p in self.model.named_parameters()}
        return sum(sizes[n] for n in self.params), sum(sizes.values())

    def is_out_of_memory(self, exc):
        return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()  # framework

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
        if getattr(self.model, "padded_head", None) is not None and "transformer.wte.weight" in state:  # framework
            refresh_padded_head(self.model)  # a copy, not a view as in torch: made again  # framework

    def load_trainable_checkpoint(self, path):
        """Resume: the trainable weights saved at `path`, checked against the model."""
        self.load_trainable(load_for_model(path, self.config, base_loaded=True))

    def optimizer_state(self):
        return self.optimizer.state_numpy(self.params)

    def load_optimizer_state(self, arrays):
        self.optimizer.load_state_numpy(self.params, arrays)
