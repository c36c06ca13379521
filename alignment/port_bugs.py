"""Typical port bugs planted in Jittor's own ports (jittor.models' ResNet-18 and MobileNetV2) and
in this project's Jittor GPT-2, for alignment.auto_diff to find: scripts/auto_diff_ports.py
measures the kill rate and the localization, alignment/test_auto_diff.py checks some.

Each entry of PORT_BUGS: (model, plant(patches, jittor model), train mode, where auto_diff must
localize it: {"forward": ..., "backward": ..., "buffers": ...} entries to check). `patches` is
an alignment.planted_bugs.Patches (or pytest's monkeypatch). A bug replaces one module
instance's `execute` or one attribute: the class and every other instance stay as Jittor ships
them. BatchNorm bugs that act in train mode are planted in a port whose running-variance
update is corrected first (`unbiased_running_var`): Jittor's BatchNorm keeps the biased batch
variance where torch keeps the unbiased one (a real difference, reported as a finding), which
would otherwise be the first buffer divergence of every train-mode run.
"""
from __future__ import annotations

import types

from . import planted_bugs


def module(model, path: str):
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def _replace(patches, model, path, execute):
    target = module(model, path)
    patches.setattr(target, "execute", types.MethodType(execute, target))


def _jt():
    from jittor_impl.runtime import jt
    return jt


def batch_norm_train(self, x, detach_mean=False, update_mean=True, unbiased=False):
    """Jittor's BatchNorm.execute in train mode (jittor/nn.py), with the switches the plants
    turn: the batch mean detached from the graph, the running mean not updated, and the running
    variance updated with the unbiased batch variance as torch does."""
    jt = _jt()
    dims = [0] + list(range(2, x.ndim))
    xmean = jt.mean(x, dims=dims)
    x2mean = jt.mean(x * x, dims=dims)
    if detach_mean:
        xmean, x2mean = xmean.stop_grad(), x2mean.stop_grad()
    xvar = (x2mean - xmean * xmean).maximum(0.0)
    w = self.weight / jt.sqrt(xvar + self.eps)
    b = self.bias - xmean * w
    norm_x = x * w.broadcast(x, dims) + b.broadcast(x, dims)
    if update_mean:
        self.running_mean.update(self.running_mean + (xmean.reshape((-1,)) - self.running_mean)
                                 * self.momentum)
    n = x.numel() / x.shape[1]
    var = xvar * (n / (n - 1)) if unbiased else xvar
    self.running_var.update(self.running_var + (var.reshape((-1,)) - self.running_var)
                            * self.momentum)
    return norm_x


def _bn_eval(self, x):
    jt = _jt()
    dims = [0] + list(range(2, x.ndim))
    w = self.weight / jt.sqrt(self.running_var + self.eps)
    b = self.bias - self.running_mean * w
    return x * w.broadcast(x, dims) + b.broadcast(x, dims)


def unbiased_running_var(patches, model):
    """Every BatchNorm of the port keeps torch's unbiased running variance (the finding fixed)."""
    for name, sub in model.named_modules():
        if type(sub).__name__ == "BatchNorm":
            _replace(patches, model, name, lambda self, x: (
                batch_norm_train(self, x, unbiased=True) if self.is_train else _bn_eval(self, x)))


def torch_style_adam(params, lr: float, eps: float = 1e-8, betas=(0.9, 0.999)):
    """jittor.optim.Adam with torch's placement of eps (the finding fixed): torch divides the
    bias-corrected first moment by sqrt(v / (1 - beta2^t)) + eps; Jittor's Adam divides m by
    sqrt(v) + eps and scales by sqrt(1 - beta2^t) / (1 - beta1^t) after, so its eps acts as
    eps / sqrt(1 - beta2^t) (31.6x torch's at step 1 with beta2 0.999)."""
    import math
    jt = _jt()

    class TorchStyleAdam(jt.optim.Adam):
        def step(self, loss=None, retain_graph=False):
            self.pre_step(loss, retain_graph)
            n = float(self.n_step)
            jt.flags.node_order = 1
            for pg in self.param_groups:
                b0, b1 = pg.get("betas", self.betas)
                rate, eps_ = pg.get("lr", self.lr), pg.get("eps", self.eps)
                for p, g, v, m in zip(pg["params"], pg["grads"], pg["values"], pg["m"]):
                    if p.is_stop_grad():
                        continue
                    m.update(b0 * m + (1 - b0) * g)
                    v.update(b1 * v + (1 - b1) * g * g)
                    denominator = jt.sqrt(v) / math.sqrt(1 - b1 ** n) + eps_
                    p.update(p - m * (rate / (1 - b0 ** n)) / denominator)
            self.post_step()
    return TorchStyleAdam(params, lr, eps=eps, betas=betas)


def _bn_variant(**switches):
    def execute(self, x):
        return batch_norm_train(self, x, unbiased=True, **switches) if self.is_train \
            else _bn_eval(self, x)
    return execute


# ------------------------------------------------------------------------- the plants
def conv_kernel_flipped(patches, model):  # convolution instead of cross-correlation
    def execute(self, x):
        jt = _jt()
        return jt.nn.conv2d(x, self.weight[:, :, ::-1, ::-1], self.bias, self.stride,
                            self.padding, self.dilation, self.groups)
    _replace(patches, model, "layer1.0.conv1", execute)


def depthwise_dilation(patches, model):  # a depthwise conv with dilation 2 (same output shape)
    conv = module(model, "features.2.conv.1.0")
    patches.setattr(conv, "dilation", (2, 2))
    patches.setattr(conv, "padding", (2, 2))


def bn_eps(patches, model):
    patches.setattr(module(model, "layer2.0.bn2"), "eps", 1e-3)


def bn_running_stats_in_train(patches, model):
    unbiased_running_var(patches, model)
    _replace(patches, model, "layer1.0.bn1", _bn_eval)


def bn_momentum(patches, model):
    unbiased_running_var(patches, model)
    patches.setattr(module(model, "layer3.0.bn1"), "momentum", 0.01)


def bn_mean_detached(patches, model):
    unbiased_running_var(patches, model)
    _replace(patches, model, "layer1.1.bn2", _bn_variant(detach_mean=True))


def bn_running_mean_frozen(patches, model):
    # the depthwise conv's BatchNorm: its input (a conv of ReLU6 outputs) has a batch mean away
    # from zero. The expand conv's (conv.0.1) does not: it is a 1x1 conv of the previous block's
    # BatchNorm output, whose batch mean is zero, so a frozen running mean there is unobservable
    unbiased_running_var(patches, model)
    _replace(patches, model, "features.5.conv.1.1", _bn_variant(update_mean=False))


def maxpool_as_average(patches, model):
    patches.setattr(module(model, "maxpool"), "op", "mean")


def global_pool_as_max(patches, model):
    _replace(patches, model, "avgpool", lambda self, x: x.reduce("maximum", [2, 3], keepdims=True))


def residual_dropped(patches, model):
    def execute(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out)  # missing: out += identity
    _replace(patches, model, "layer2.1", execute)


def inverted_residual_skip_dropped(patches, model):
    patches.setattr(module(model, "features.3"), "use_res_connect", False)


def relu_straight_through(patches, model):  # forward right, gradient passes where x < 0
    _replace(patches, model, "layer1.0.relu",
             lambda self, x: x + (_jt().nn.relu(x) - x).stop_grad())


def fc_weight_gradient_halved(patches, model):
    def execute(self, x):
        w = self.weight * 0.5 + (self.weight * 0.5).stop_grad()  # forward right
        return _jt().matmul(x, w.transpose()) + self.bias
    _replace(patches, model, "fc", execute)


def _gpt2(name):
    plant = planted_bugs.MODEL_BUGS[name][0]
    return lambda patches, model: plant(patches, model)


PORT_BUGS = {
    "conv kernel flipped (layer1.0.conv1)": (
        "resnet18", conv_kernel_flipped, False, {"forward": "layer1.0.conv1"}),
    "depthwise conv dilation 2 (features.2.conv.1.0)": (
        "mobilenet_v2", depthwise_dilation, False, {"forward": "features.2.conv.1.0"}),
    "BatchNorm eps 1e-5 -> 1e-3 (layer2.0.bn2)": (
        "resnet18", bn_eps, False, {"forward": "layer2.0.bn2"}),
    "BatchNorm uses running statistics in train mode (layer1.0.bn1)": (
        "resnet18", bn_running_stats_in_train, True, {"forward": "layer1.0.bn1"}),
    "BatchNorm batch mean detached (backward only, layer1.1.bn2)": (
        "resnet18", bn_mean_detached, True, {"forward": None, "backward": "layer1.1.bn2"}),
    "BatchNorm momentum 0.1 -> 0.01 (buffers only, layer3.0.bn1)": (
        "resnet18", bn_momentum, True, {"forward": None, "backward": None,
                                        "buffers": "layer3.0.bn1"}),
    "BatchNorm running mean never updated (buffers only, features.5.conv.1.1)": (
        "mobilenet_v2", bn_running_mean_frozen, True, {"forward": None, "backward": None,
                                                       "buffers": "features.5.conv.1.1"}),
    "max pooling computes the average (maxpool)": (
        "resnet18", maxpool_as_average, False, {"forward": "maxpool"}),
    "global average pooling computes the max (avgpool)": (
        "resnet18", global_pool_as_max, False, {"forward": "avgpool"}),
    "residual connection dropped (layer2.1)": (
        "resnet18", residual_dropped, False, {"forward": "layer2.1"}),
    "inverted residual's skip connection dropped (features.3)": (
        "mobilenet_v2", inverted_residual_skip_dropped, False, {"forward": "features.3"}),
    "ReLU gradient passes negative inputs (backward only, layer1.0.relu)": (
        "resnet18", relu_straight_through, False, {"forward": None,
                                                    "backward": "layer1.0.relu#2"}),
    "fc weight gradient halved (backward only, fc)": (
        "resnet18", fc_weight_gradient_halved, False, {"forward": None, "backward": "fc"}),
    "GPT-2 attention scale 1/sqrt(d) missing": (
        "gpt2", _gpt2("attention scale 1/sqrt(d) missing"), False,
        {"forward": "transformer.h.0.attn"}),
    "GPT-2 causal mask off by one": (
        "gpt2", _gpt2("causal mask off by one"), False, {"forward": "transformer.h.0.attn"}),
    "GPT-2 softmax over the query axis": (
        "gpt2", _gpt2("softmax over the query axis"), False, {"forward": "transformer.h.0.attn"}),
    "GPT-2 LayerNorm statistics detached (backward only)": (
        "gpt2", _gpt2("LayerNorm statistics detached (backward only)"), False,
        {"forward": None, "backward": "transformer.h.1.ln_2"}),
}
