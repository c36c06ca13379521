"""LoRA for GPT-2's fused attention projection, in Jittor (twin: torch_impl/lora.py).

`MergedLinear` computes what loralib's `MergedLinear(..., enable_lora=[True, False, True],
fan_in_fan_out=True)` does: a frozen (in, out) weight plus low-rank updates of the query and
value thirds, `scaling = alpha / r`, dropout on the LoRA input only.
"""
from shared.model.params import is_lora_name

from .ops import dropout, lora_padded_B, matmul, matmul_transpose, mixed_precision, parameter
from .runtime import jt  # framework

nn = jt.nn  # framework


class MergedLinear(nn.Module):
    def __init__(self, in_features, out_features, r=0, lora_alpha=1, lora_dropout=0.0,
                 layer_index=0):
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.weight = parameter(in_features, out_features)  # (in, out) storage
        self.bias = parameter(out_features)
        self.layer_index = layer_index  # names this layer's stream in shared dropout masks
        self.dropout_p = lora_dropout
        self.shared_dropout = None  # shared.train.dropout.SharedDropout: backend-neutral masks
        self.merged = False
        if r > 0:
            self.scaling = lora_alpha / r
            self.lora_A = parameter(2 * r, in_features)  # rows: query, value
            self.lora_B = parameter(out_features // 3 * 2, r)

    def lora_dropout(self, x):
        if not self.training or self.dropout_p == 0.0:
            return x
        if self.shared_dropout is not None:
            mask = self.shared_dropout.mask(self.layer_index, tuple(x.shape))
            return x * jt.array(mask).cast(x.dtype)  # framework
        return dropout(x, self.dropout_p)

    def lora_delta(self, x):
        """x @ dW for the query and value thirds, zero for the key third. Under mixed precision
        one product with `padded_B` (no (..., 3e) concat of two deltas and zeros, no slices of
        after_a); float32 keeps the two products and the concat, whose rounding it is checked by."""
        r, e = self.r, self.out_features // 3
        if mixed_precision(x):  # x A^T without a transposed copy of A, then the padded B
            return matmul(matmul_transpose(x, self.lora_A), self.padded_B()) * self.scaling
        after_a = matmul(x, self.lora_A.transpose(0, 1))  # (..., 2r)
        delta_q = matmul(after_a[..., :r], self.lora_B[:e].transpose(0, 1))
        delta_v = matmul(after_a[..., r:], self.lora_B[e:].transpose(0, 1))
        return jt.concat([delta_q, jt.zeros_like(delta_q), delta_v], dim=-1) * self.scaling

    def padded_B(self):
        """The (2r, 3e) block matrix [[B_q^T, 0, 0], [0, 0, B_v^T]]: after_a @ it is the delta of
        all three thirds in one product (ops.lora_padded_B builds it)."""
        return lora_padded_B(self.lora_B, self.r)

    def delta_weight(self):
        """The (in, out) update that merging adds to `weight`."""
        r, e = self.r, self.out_features // 3
        delta_q = self.lora_A[:r].transpose(0, 1) @ self.lora_B[:e].transpose(0, 1)
        delta_v = self.lora_A[r:].transpose(0, 1) @ self.lora_B[e:].transpose(0, 1)
        return jt.concat([delta_q, jt.zeros_like(delta_q), delta_v], dim=1) * self.scaling

    def execute(self, x):
        result = matmul(x, self.weight) + self.bias
        if self.r > 0 and not self.merged:
            result = result + self.lora_delta(self.lora_dropout(x))
        return result

    def merge(self):
        if self.r > 0 and not self.merged:
            with jt.no_grad():  # framework
                self.weight.assign(self.weight + self.delta_weight())  # framework
            self.merged = True

    def unmerge(self):
        if self.r > 0 and self.merged:
            with jt.no_grad():  # framework
                self.weight.assign(self.weight - self.delta_weight())  # framework
            self.merged = False


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, MergedLinear)]


def mark_only_lora_as_trainable(model):
    """Freeze everything but `lora_A`/`lora_B` (loralib's bias='none')."""
    mark_trainable(model, is_lora_name)


def mark_trainable(model, trains):
    # framework: docstring lines 1-5
    """Train the parameters whose name `trains(name)` accepts, freeze the others.

    Jittor's `eval()` stops the gradients of all parameters and records in `backup_grad_state`
    which were trainable; `train()` restores that record. The record is rewritten here too, or
    freezing a model in eval mode would be undone by its next `train()`."""
    wanted = {}  # framework
    for name, p in model.named_parameters():
        p.requires_grad = wanted[id(p)] = trains(name)  # framework
    for module in model.modules():  # framework
        record = getattr(module, "backup_grad_state", None)  # framework
        if record is not None:  # framework
            for p in module.parameters():  # framework
                record[id(p)] = wanted[id(p)]  # framework


def merge_lora(model):
    """Fold the LoRA updates into the base weights (inference without the extra matmuls)."""
    for layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model):
    for layer in lora_layers(model):
        layer.unmerge()


def set_shared_dropout(model, shared_dropout):
    """Use backend-neutral dropout masks (or None for the framework's own RNG)."""
    for layer in lora_layers(model):
        layer.shared_dropout = shared_dropout
