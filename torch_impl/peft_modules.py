"""The modules of the PEFT methods beside LoRA, in PyTorch (twin: jittor_impl/peft_modules.py).

Adapters (`x + up(gelu(down(x)))`, after attention and after the MLP), the prompt encoder of
prompt tuning and P-tuning (peft's PromptEmbedding / PromptEncoder: a table, through an MLP or a
bidirectional 2-layer LSTM and an MLP for P-tuning) and the prefix encoder of prefix tuning
(peft's PrefixEncoder: a table of per-layer keys and values, or a table through a tanh MLP).
Which parameters exist, their names and their seeded values: shared/model/peft_methods.py; how
the model feeds them in: `with_virtual_tokens`, called by model.py's GPT2Model.
"""
import torch  # framework
from torch import nn  # framework

from shared.model.peft_methods import encoder_width

from .ops import gelu, matmul, matmul_transpose, parameter, permute


def relu(x):
    return torch.relu(x)  # framework


class Table(nn.Module):
    """A (rows, width) trainable table read whole (the virtual tokens' embeddings)."""

    def __init__(self, rows, width):
        super().__init__()
        self.weight = parameter(rows, width)


class Dense(nn.Module):
    """x @ weight + bias, the weight stored (in, out) as the model's Conv1D."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = parameter(n_in, n_out)
        self.bias = parameter(n_out)

    def forward(self, x):
        return matmul(x, self.weight) + self.bias


class Adapter(nn.Module):
    """A bottleneck adapter with its own residual: x + up(gelu(down(x)))."""

    def __init__(self, n_embd, dim):
        super().__init__()
        self.down = Dense(n_embd, dim)
        self.up = Dense(dim, n_embd)

    def forward(self, x):
        return x + self.up(gelu(self.down(x)))


class MLPHead(nn.Module):
    """fc_in, activation, [fc_mid, activation,] fc_out (peft's Sequential heads)."""

    def __init__(self, n_in, hidden, n_out, middle, activation):
        super().__init__()
        self.fc_in = Dense(n_in, hidden)
        self.fc_mid = Dense(hidden, hidden) if middle else None
        self.fc_out = Dense(hidden, n_out)
        self.activation = activation

    def forward(self, x):
        x = self.activation(self.fc_in(x))
        if self.fc_mid is not None:
            x = self.activation(self.fc_mid(x))
        return self.fc_out(x)


class LSTM(nn.Module):
    """torch.nn.LSTM(n_in, hidden, num_layers=2, bidirectional=True) over one (T, n_in) sequence,
    written out (gates i, f, g, o; the reference LSTM's parameter names and shapes) so both twins compute it
    the same way; T is the few virtual tokens."""

    def __init__(self, n_in, hidden):
        super().__init__()
        self.hidden = hidden
        for layer in range(2):
            for suffix in ("", "_reverse"):
                width = n_in if layer == 0 else 2 * hidden
                setattr(self, f"weight_ih_l{layer}{suffix}", parameter(4 * hidden, width))
                setattr(self, f"weight_hh_l{layer}{suffix}", parameter(4 * hidden, hidden))
                setattr(self, f"bias_ih_l{layer}{suffix}", parameter(4 * hidden))
                setattr(self, f"bias_hh_l{layer}{suffix}", parameter(4 * hidden))

    def direction(self, x, name, reverse):
        w_hh = getattr(self, "weight_hh_" + name)
        gates_x = (matmul_transpose(x, getattr(self, "weight_ih_" + name))
                   + getattr(self, "bias_ih_" + name) + getattr(self, "bias_hh_" + name))
        steps = list(range(x.shape[0]))
        h = c = None
        outputs = []
        for t in reversed(steps) if reverse else steps:
            gates = gates_x[t:t + 1] if h is None else gates_x[t:t + 1] + matmul_transpose(h, w_hh)
            i, f, g, o = gates.split(self.hidden, dim=-1)
            new = torch.sigmoid(i) * torch.tanh(g)
            c = new if c is None else torch.sigmoid(f) * c + new
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        if reverse:
            outputs.reverse()
        return torch.concat(outputs, dim=0)

    def forward(self, x):
        for layer in range(2):
            x = torch.concat([self.direction(x, f"l{layer}", False),
                              self.direction(x, f"l{layer}_reverse", True)], dim=-1)
        return x


class PromptEncoder(nn.Module):
    """The N virtual token embeddings: the table itself (prompt tuning) or the table through an
    MLP or LSTM + MLP encoder (P-tuning)."""

    def __init__(self, config):
        super().__init__()
        peft, e = config.peft, config.n_embd
        self.embedding = Table(peft.num_virtual_tokens, e)
        self.lstm_head = self.mlp_head = None
        if peft.method == "ptuning":
            h = encoder_width(config)
            if peft.ptuning_encoder == "lstm":
                self.lstm_head = LSTM(e, h)
                self.mlp_head = MLPHead(2 * h, 2 * h, e, False, relu)
            else:
                self.mlp_head = MLPHead(e, h, e, True, relu)

    def forward(self):
        x = self.embedding.weight
        if self.lstm_head is not None:
            x = self.lstm_head(x)
        if self.mlp_head is not None:
            x = self.mlp_head(x)
        return x


class PrefixEncoder(nn.Module):
    """Every layer's N prefix keys and values: the table itself, or the table through a tanh MLP
    (--prefix_projection); columns ordered (layer, key|value, head, head_dim) as peft's."""

    def __init__(self, config):
        super().__init__()
        peft, e = config.peft, config.n_embd
        self.n_layer, self.n_head = config.n_layer, config.n_head
        width = config.n_layer * 2 * e
        self.embedding = Table(peft.num_virtual_tokens, e if peft.prefix_projection else width)
        self.transform = (MLPHead(e, peft.prefix_projection, width, False, torch.tanh)
                          if peft.prefix_projection else None)

    def forward(self, batch):
        """[(key, value)] per layer, each (batch, head, N, head_dim): the past before the input."""
        kv = self.embedding.weight
        if self.transform is not None:
            kv = self.transform(kv)
        n = kv.shape[0]
        kv = permute(kv.reshape(n, 2 * self.n_layer, self.n_head, -1), 1, 2, 0, 3)
        kv = kv.unsqueeze(1).expand(kv.shape[0], batch, kv.shape[1], n, kv.shape[3])
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(self.n_layer)]


def with_virtual_tokens(body, inputs_embeds, past, len_past):
    """(inputs_embeds, past, len_past, stripped) after the method's virtual positions: on the
    first pass the prompt goes before the input (its outputs, `stripped` of them, are dropped
    after the last layer) or the prefixes become the past; positions written into a
    preallocated cache (`len_past`) move by N, as the cache holds the N virtual ones first."""
    n = body.virtual_tokens
    if len_past is not None:
        len_past = len_past + n
    if past is not None:
        return inputs_embeds, past, len_past, 0
    if body.prefix_encoder is not None:
        return inputs_embeds, body.prefix_encoder(inputs_embeds.shape[0]), len_past, 0
    prompt = body.prompt_encoder()
    prompt = prompt.unsqueeze(0).expand(inputs_embeds.shape[0], n, prompt.shape[1])
    return torch.concat([prompt, inputs_embeds], dim=1), past, len_past, n
