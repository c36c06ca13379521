"""GPT-2 with LoRA in Jittor (twin: torch_impl/model.py, same structure line for line).

Semantics of microsoft/LoRA `examples/NLG/src/model.py`: tanh-approximate GELU, Conv1D weights
stored (in, out), attention scaled by 1/sqrt(head_dim) (unless the config says otherwise) with the causal mask applied as
`w * b - 1e10 * (1 - b)`, no attention/residual dropout, output head tied to `wte`, and
`execute(input_ids, lm_labels, lm_mask, past, len_past, label_smooth)`. The KV cache `past` is a
list of per-layer `(key, value)` pairs shaped (batch, head, seq, head_dim); with `len_past` (one
int per row) a single new token is written at that position of a preallocated cache and keys at
or beyond `len_past + 1` are masked, which lets rows of different lengths decode together.
"""

import numpy as np

from shared.text.batching import check_width
from shared.model.checkpoint import load_for_model
from shared.model.config import GPT2Config
from shared.decode.decode_cache import SharedPrefixCache
from shared.model.params import init_state_dict, is_adapter_name, is_lora_name
from shared.model.peft_methods import method_of, virtual_tokens

from .lora import MergedLinear
from .ops import (ATTENTION_IMPLS, DEFAULT_ATTENTION, batched_matmul_transpose, causal_mask,
                  cross_entropy, embedding, fused_attention, gelu, layer_norm, matmul,
                  matmul_transpose, merge_heads, parameter, permute, qkv_attention, softmax,
                  split_heads)
from .peft_modules import Adapter, PrefixEncoder, PromptEncoder, with_virtual_tokens
from . import row_table  # framework
from .runtime import jt  # framework

nn = jt.nn  # framework
MASK_VALUE = -1.0e10  # the reference's mask value


# LayerNorm and Embedding are modules of our own, not Jittor's: its nn.LayerNorm takes the
# variance as E[x^2] - E[x]^2 (see ops.layer_norm), and its nn.Embedding draws a random table at
# construction, which advances Jittor's RNG and so moves the dropout masks.
class LayerNorm(nn.Module):
    def __init__(self, hidden_size, eps):
        super().__init__()
        self.weight = parameter(hidden_size, value=1.0)
        self.bias = parameter(hidden_size)
        self.eps = eps

    def execute(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class Conv1D(nn.Module):
    """A linear layer whose weight is stored (in, out), as in the GPT-2 checkpoints."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = parameter(in_features, out_features)
        self.bias = parameter(out_features)

    def execute(self, x):
        return matmul(x, self.weight) + self.bias


class Embedding(nn.Module):
    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.weight = parameter(num_embeddings, embedding_dim)

    def execute(self, ids):
        return embedding(self.weight, ids)


class Attention(nn.Module):
    def __init__(self, config: GPT2Config, layer_index: int):
        super().__init__()
        self.n_head, self.split_size = config.n_head, config.n_embd
        self.c_attn = MergedLinear(config.n_embd, 3 * config.n_embd,
                                   r=config.lora_dim_of(layer_index),
                                   lora_alpha=config.lora_alpha_of(layer_index),
                                   lora_dropout=config.lora_dropout, layer_index=layer_index)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.attn_impl = DEFAULT_ATTENTION  # one of ATTENTION_IMPLS
        self.divisor = config.attention_divisor(layer_index)  # sqrt(head_dim) by default

    def _attn_math(self, q, k, v, len_kv=None):
        w = batched_matmul_transpose(q, k)
        w = w / self.divisor
        nd, ns = w.shape[-2], w.shape[-1]
        b = causal_mask(nd, ns, w)  # float32, as the reference buffer: masks in fp32
        w = w * b - 1e10 * (1 - b)
        if len_kv is not None:
            beyond = jt.arange(ns).reshape(1, ns) >= len_kv.reshape(-1, 1)  # framework
            w = w.masked_fill(beyond.reshape(-1, 1, 1, ns), MASK_VALUE)
        w = softmax(w, dim=-1)
        return matmul(w, v)

    def _attn_shared_prefix(self, q, key, value, cache):
        """One new token per row against a `SharedPrefixCache`, after writing the token's key and
        value at column `cache.step`: the masked softmax of the math path over [the query's keys,
        the row's generated keys], the K rows of a query taking their products with its keys in
        one (K, head_dim) x (head_dim, width) product, so the shared keys are read once per query.
        Changes the order of fp32 sums against the per-row cache: beam.py's `cache` switch."""
        cache.key[:, :, cache.step] = key.squeeze(2)
        cache.value[:, :, cache.step] = value.squeeze(2)
        rows, n_head, _, head_dim = q.shape
        queries, width = cache.prefix_key.shape[0], cache.prefix_key.shape[2]
        grouped = permute(q.reshape(queries, rows // queries, n_head, head_dim), 0, 2, 1, 3)
        w_prefix = permute(batched_matmul_transpose(grouped, cache.prefix_key), 0, 2, 1, 3)
        w = jt.concat((w_prefix.reshape(rows, n_head, 1, width),
                       batched_matmul_transpose(q, cache.key)), dim=-1)
        w = (w / self.divisor).masked_fill(cache.masked, MASK_VALUE)
        w = softmax(w, dim=-1)
        w_prefix = permute(w[:, :, 0, :width].reshape(queries, rows // queries, n_head, width), 0, 2, 1, 3)
        a_prefix = permute(matmul(w_prefix, cache.prefix_value), 0, 2, 1, 3)
        return a_prefix.reshape(rows, n_head, 1, head_dim) + matmul(w[:, :, :, width:], cache.value)

    def execute(self, x, layer_past=None, len_past=None):
        qkv = self.c_attn(x)
        query, key, value = (split_heads(t, self.n_head) for t in qkv.split(self.split_size, dim=2))
        if layer_past is None and self.attn_impl == "sdpa":  # self-attention: straight from qkv
            return self.c_proj(qkv_attention(qkv, self.n_head, self.divisor)), (key, value)
        if isinstance(layer_past, SharedPrefixCache):  # the beam search's cache (beam.py)
            a = self._attn_shared_prefix(query, key, value, layer_past)
            return self.c_proj(merge_heads(a)), layer_past
        if isinstance(layer_past, row_table.RowTableCache):  # framework: beam.py's per-row cache, not reordered
            a = row_table.attend(layer_past, query, key, value, len_past, self.divisor)  # framework
            return self.c_proj(merge_heads(a)), layer_past  # framework
        len_kv = None
        if layer_past is not None:
            past_key, past_value = layer_past
            if len_past is None:  # append to a cache that holds exactly the past tokens
                key = jt.concat((past_key, key), dim=-2)
                value = jt.concat((past_value, value), dim=-2)
            else:  # write one token per row at its own position of a preallocated cache
                rows = jt.arange(key.shape[0])  # framework
                past_key[rows, :, len_past, :] = key.squeeze(2)  # one new token: a view, no copy
                past_value[rows, :, len_past, :] = value.squeeze(2)
                key, value = past_key, past_value
                len_kv = len_past + 1
        present = (key, value)
        if self.attn_impl == "sdpa":  # the fused kernel, as nanoGPT's flash path
            a = fused_attention(query, key, value, len_kv=len_kv, divisor=self.divisor)
        else:
            a = self._attn_math(query, key, value, len_kv=len_kv)
        return self.c_proj(merge_heads(a)), present


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd)

    def execute(self, x):
        return self.c_proj(gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_index: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, layer_index)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)
        adapters = method_of(config) == "adapter"  # --peft adapter (peft_modules.py)
        self.adapter_attn = Adapter(config.n_embd, config.peft.adapter_dim) if adapters else None
        self.adapter_mlp = Adapter(config.n_embd, config.peft.adapter_dim) if adapters else None

    def execute(self, x, layer_past=None, len_past=None):
        a, present = self.attn(self.ln_1(x), layer_past=layer_past, len_past=len_past)
        if self.adapter_attn is not None:
            a = self.adapter_attn(a)
        x = x + a
        m = self.mlp(self.ln_2(x))
        if self.adapter_mlp is not None:
            m = self.adapter_mlp(m)
        x = x + m
        return x, present


class GPT2Model(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.wte = Embedding(config.vocab_size, config.n_embd)
        self.wpe = Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        method = method_of(config)  # the virtual positions of --peft prompt/ptuning/prefix
        self.virtual_tokens = virtual_tokens(config)
        self.prompt_encoder = PromptEncoder(config) if method in ("prompt", "ptuning") else None
        self.prefix_encoder = PrefixEncoder(config) if method == "prefix" else None

    def execute(self, input_ids, past=None, len_past=None):
        inputs_embeds, stripped = self.wte(input_ids), 0
        if self.virtual_tokens:
            inputs_embeds, past, len_past, stripped = with_virtual_tokens(
                self, inputs_embeds, past, len_past)
        if past is None:
            past_length, past = 0, [None] * len(self.h)
        elif len_past is None:
            past_length = past[0][0].shape[-2]
        if len_past is None:
            width = inputs_embeds.shape[1]
            check_width(past_length + width, self.wpe.num_embeddings)
            position_ids = jt.arange(past_length, past_length + width).int64()  # framework
            position_ids = position_ids.unsqueeze(0).expand(input_ids.shape[0], width)
        else:
            position_ids = len_past.unsqueeze(1)
        hidden_states = inputs_embeds + self.wpe(position_ids)
        presents = []
        for block, layer_past in zip(self.h, past):
            hidden_states, present = block(hidden_states, layer_past=layer_past, len_past=len_past)
            presents.append(present)
        hidden_states = self.ln_f(hidden_states)
        return (hidden_states[:, stripped:] if stripped else hidden_states), presents


def lm_loss(logits, lm_labels, lm_mask=None, label_smooth=0.0):
    """Token losses (label-smoothed as the reference does), mask-weighted mean."""
    smoothing = label_smooth if label_smooth > 0.0001 else 0.0
    loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), lm_labels.reshape(-1), smoothing)
    return masked_mean(loss.reshape(lm_labels.shape), lm_mask)


def masked_mean(loss, lm_mask):
    if lm_mask is None:
        lm_mask = jt.ones_like(loss)
    loss = loss * lm_mask
    return loss.sum() / (lm_mask.sum() + 0.0001)


class GPT2Base(nn.Module):
    """What a model around a `GPT2Model` body (`self.transformer`) has whatever its head
    (GPT2LMModel, classifier.py's GPT2Classifier): the attention switch, and loading canonical
    {name: numpy array} weights, with `base_loaded` True once pretrained base weights are in."""

    def set_attention(self, impl: str):
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for block in self.transformer.h:
            block.attn.attn_impl = impl

    def load_model_state(self, state: dict, extra=None):
        """`state` (as shared.model.checkpoint.load_for_model gives it) and `extra` (weights outside
        the body, e.g. a classifier head) into the parameters; returns the model."""
        self.load_state_numpy({**state, **(extra or {})})
        if any(not is_adapter_name(k) for k in state):
            self.base_loaded = True
        return self

    def load_state_numpy(self, state: dict):
        params = dict(self.named_parameters())
        for name, value in state.items():
            param = params[name]
            param.assign(jt.array(np.ascontiguousarray(value)).cast(param.dtype))  # framework


class GPT2LMModel(GPT2Base):
    """GPT-2 language model. New models are initialised by `shared.model.params.init_state_dict`
    (seeded numpy), so both backends built with the same config and seed hold equal weights."""

    def __init__(self, config: GPT2Config, seed: int = 0):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.base_loaded = False  # True once pretrained base weights are in (LoRA-only loads need it)
        self.padded_head = None  # the output head padded to aligned rows (frozen_weights.py)
        self.load_state_numpy(init_state_dict(config, seed))

    def execute(self, input_ids, lm_labels=None, lm_mask=None, past=None, len_past=None,
                label_smooth=0.0):
        hidden_states, presents = self.transformer(input_ids, past=past, len_past=len_past)
        head = self.transformer.wte.weight if self.padded_head is None else self.padded_head
        lm_logits = matmul_transpose(hidden_states, head)  # tied head  # framework
        if self.padded_head is not None:  # a slice is a copy in Jittor: taken only when padded  # framework
            lm_logits = lm_logits[..., :self.config.vocab_size]  # framework
        if lm_labels is None:
            return lm_logits, presents
        return lm_logits, lm_loss(lm_logits, lm_labels, lm_mask, label_smooth)

    # ------------------------------------------------------------------ weights in and out
    def load_weight(self, state_or_path):
        """Load a checkpoint (path or state dict) of any supported layout; see shared.model.checkpoint."""
        state = load_for_model(state_or_path, self.config, base_loaded=self.base_loaded)
        return self.load_model_state(state)

    def state_dict_numpy(self, lora_only: bool = False) -> dict:
        """Canonical {name: float32 numpy array}; LoRA merging is undone in what is returned."""
        out = {}
        for name, param in self.named_parameters():
            if lora_only and not is_lora_name(name):
                continue
            out[name] = param.float32().numpy().copy()  # framework
        for index, block in enumerate(self.transformer.h):
            layer = block.attn.c_attn
            if layer.merged and not lora_only:
                unmerged = layer.weight - layer.delta_weight()
                out[f"transformer.h.{index}.attn.c_attn.weight"] = unmerged.float32().numpy()  # framework
        return out
