"""The twins stay translations of each other: torch_impl/X.py and jittor_impl/X.py, line for line.

As transformers keeps its framework copies honest (`# Copied from` + utils/check_copies.py): each
torch file is normalised (torch names mapped to their Jittor names by the table below, comments
and blank lines dropped), diffed against its Jittor twin, and every line that differs must be on
the explicit list of lines where the frameworks genuinely differ. A twin that drifts fails here;
an entry of the list that no longer differs fails too, so the list stays exact.
"""
import difflib
import os
import re
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWIN_FILES = ("__init__.py", "model.py", "lora.py", "ops.py", "optim.py", "train.py", "beam.py",
              "generate.py")

# torch name -> Jittor name, applied to the torch side before the diff.
NAME_MAP = [
    (r"\bPyTorch\b", "Jittor"),
    (r"\b(torch|jittor)_impl\b", lambda m: "jittor_impl" if m.group(1) == "torch" else "torch_impl"),
    (r"\bdef forward\(", "def execute("),
    (r"`forward\(", "`execute("),
    (r"\btorch\b", "jt"),
    (r"\.float\(\)", ".float32()"),
    (r"\.view\(", ".reshape("),
]


def normalise(lines, mapped):
    out = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if mapped:
            for pattern, replacement in NAME_MAP:
                text = re.sub(pattern, replacement, text)
        out.append(text)
    return out


def twin_differences(root, name, allowed):
    """Lines of the twin pair `name` that differ and are not in `allowed` ({"torch": [...],
    "jittor": [...]}, normalised lines), and allowed lines that no longer differ."""
    with open(os.path.join(root, "torch_impl", name), encoding="utf-8") as f:
        torch_lines = normalise(f.read().splitlines(), mapped=True)
    with open(os.path.join(root, "jittor_impl", name), encoding="utf-8") as f:
        jittor_lines = normalise(f.read().splitlines(), mapped=False)
    differing = {"torch": [], "jittor": []}
    matcher = difflib.SequenceMatcher(None, torch_lines, jittor_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            differing["torch"] += torch_lines[i1:i2]
            differing["jittor"] += jittor_lines[j1:j2]
    problems = []
    for side in ("torch", "jittor"):
        ok = allowed.get(side, [])
        problems += [f"{side}_impl/{name}: drifted: {line}" for line in differing[side] if line not in ok]
        problems += [f"{side}_impl/{name}: allowed difference no longer differs: {line}"
                     for line in ok if line not in differing[side]]
    return problems


# The lines where the frameworks genuinely differ (normalised: the torch side after NAME_MAP).
ALLOWED = {
    '__init__.py': {
        'torch': [
            'Mirrors `torch_impl` name for name, so code switches backend by changing one import.',
        ],
        'jittor': [
            'Mirrors `torch_impl` name for name, so code switches backend by changing one import. Importing',
            'it configures Jittor for this machine first (see `runtime.py`).',
        ],
    },
    'model.py': {
        'torch': [
            'import jt',
            'from jt import nn',
            'beyond = jt.arange(ns, device=k.device).reshape(1, ns) >= len_kv.reshape(-1, 1)',
            'rows = jt.arange(key.shape[0], device=key.device)',
            'position_ids = jt.arange(past_length, past_length + input_ids.shape[-1],',
            'dtype=jt.long, device=input_ids.device)',
            'lse - mean(shifted), so no vocabulary-wide reduction appears in the backward pass."""',
            'loss = lse - shifted.gather(1, labels.clamp(min=0).reshape(-1, 1)).reshape(-1)',
            '@jt.no_grad()',
            'param.copy_(jt.from_numpy(np.ascontiguousarray(value)).to(param.dtype))',
            'out[name] = param.detach().float32().cpu().numpy().copy()',
            'out[f"transformer.h.{index}.attn.c_attn.weight"] = unmerged.detach().float32().cpu().numpy()',
        ],
        'jittor': [
            'from .runtime import jt',
            'nn = jt.nn',
            'beyond = jt.arange(ns).reshape(1, ns) >= len_kv.reshape(-1, 1)',
            'rows = jt.arange(key.shape[0])',
            'position_ids = jt.arange(past_length, past_length + input_ids.shape[-1]).int64()',
            "lse - mean(shifted), so no vocabulary-wide reduction appears in the backward pass. (Jittor's",
            'log_softmax differentiates through its max shift, where fp32 leaves a residue.)"""',
            'loss = lse - shifted.gather(1, labels.maximum(0).reshape(-1, 1)).reshape(-1)',
            'param.assign(jt.array(np.ascontiguousarray(value)).cast(param.dtype))',
            'out[name] = param.float32().numpy().copy()',
            'out[f"transformer.h.{index}.attn.c_attn.weight"] = unmerged.float32().numpy()',
        ],
    },
    'lora.py': {
        'torch': [
            'import jt',
            'import jt.nn.functional as F',
            'from jt import nn',
            'return x * jt.from_numpy(mask).to(device=x.device, dtype=x.dtype)',
            'return F.dropout(x, self.dropout_p, training=True)',
            '@jt.no_grad()',
            'self.weight += self.delta_weight()',
            '@jt.no_grad()',
            'self.weight -= self.delta_weight()',
            '"""Freeze everything but `lora_A`/`lora_B` (loralib\'s bias=\'none\')."""',
        ],
        'jittor': [
            'from .runtime import jt',
            'nn = jt.nn',
            'return x * jt.array(mask).cast(x.dtype)',
            'return nn.dropout(x, self.dropout_p, is_train=True)',
            'with jt.no_grad():',
            'self.weight.assign(self.weight + self.delta_weight())',
            'with jt.no_grad():',
            'self.weight.assign(self.weight - self.delta_weight())',
            '"""Freeze everything but `lora_A`/`lora_B` (loralib\'s bias=\'none\').',
            "Jittor's `eval()` stops the gradients of all parameters and records in `backup_grad_state`",
            'which were trainable; `train()` restores that record. The record is rewritten here too, or',
            'freezing a model in eval mode would be undone by its next `train()`."""',
            'for module in model.modules():',
            'record = getattr(module, "backup_grad_state", None)',
            'if record is not None:',
            'for name, p in module.named_parameters():',
            'record[id(p)] = is_lora_name(name)',
        ],
    },
    'ops.py': {
        'torch': [
            'differs between the frameworks stands here, once. In Jittor most are one call; the Jittor twin',
            'sends its products and permutes through its mixed-precision and fast-device paths.',
            'import jt',
            'import jt.nn.functional as F',
            'from jt import nn',
            'ATTENTION_IMPLS = ("math", "sdpa")  # the reference\'s formula; jt\'s fused kernel, same function',
            'DEFAULT_ATTENTION = "sdpa"',
            'return nn.Parameter(jt.full(shape, value))',
            'return jt.matmul(a, b)',
            'return F.linear(a, b)',
            'return jt.matmul(a, b.transpose(-2, -1))',
            'return x.permute(*order)',
            'return jt.ones(nd, ns, device=like.device).tril(diagonal=ns - nd)',
            '"""softmax(q k^T / sqrt(d) + causal mask) v as one fused kernel; with `len_kv`, keys at or',
            'beyond each row\'s length are masked too."""',
            'nd, ns = q.shape[-2], k.shape[-2]',
            'if len_kv is None and nd == ns:',
            'return F.scaled_dot_product_attention(q, k, v, is_causal=True)',
            'keep = causal_mask(nd, ns, q).bool()',
            'if len_kv is not None:',
            'keep = keep & (jt.arange(ns, device=k.device)[None, :] < len_kv[:, None])[:, None, None, :]',
            'return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)',
            'return F.layer_norm(x, weight.shape, weight, bias, eps)',
            'return F.embedding(ids, weight)',
            '"""0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as one fused kernel."""',
            'return F.gelu(x, approximate="tanh")',
            'return jt.softmax(x, dim=dim)',
            '"""Sum over `dim` accumulated in float64 (over 50257 words float32 sums lose digits)."""',
            'return x.sum(dim=dim, dtype=jt.float64)',
            'return x.mean(dim=dim, dtype=jt.float64)',
            'return x.detach()',
            'return x.max(dim=-1, keepdim=True).values',
        ],
        'jittor': [
            'differs between the frameworks stands here, once. The products and permutes take their',
            # Jittor reads past a table's end instead of failing: host-known ids are checked.
            'import numpy as np',
            'from shared.batching import check_token_ids',
            '"""Rows of `weight`. Indexing a Jittor Var past its end returns garbage instead of failing,',
            'so ids known on the host (numpy) are checked here; positions are checked from shapes in',
            'GPT2Model, and training batches in shared code before they reach the device."""',
            'if isinstance(ids, np.ndarray):',
            'check_token_ids(ids, weight.shape[0])',
            'ids = jt.array(ids)',
            'mixed-precision and fast-device forms from precision.py (direct cuBLAS calls and gathers on',
            'CUDA, blocked sums on the CPU).',
            'import math',
            'from . import precision',
            'from .runtime import jt',
            'nn = jt.nn',
            'ATTENTION_IMPLS = ("math",)',
            'DEFAULT_ATTENTION = "math"',
            'return jt.full(shape, value)',
            'return precision.matmul(a, b)',
            'return precision.matmul_transpose(a, b)',
            'return precision.batched_matmul_transpose(a, b)',
            'return precision.permute(x, *order)',
            'return jt.tril(jt.ones((nd, ns)), diagonal=ns - nd)',
            '"""Not available: ATTENTION_IMPLS keeps GPT2LMModel.set_attention from choosing it."""',
            'raise ValueError("the jittor backend has no fused attention kernel; use attention \'math\'")',
            '"""Two-pass variance, as torch: Jittor\'s nn.LayerNorm takes E[x^2] - E[x]^2, losing digits."""',
            'u = x.mean(-1, keepdims=True)',
            's = ((x - u) * (x - u)).mean(-1, keepdims=True)',
            'return weight * ((x - u) / jt.sqrt(s + eps)) + bias',
            'return weight[ids]',
            '"""0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); Jittor fuses these into one kernel."""',
            'return 0.5 * x * (1.0 + jt.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jt.pow(x, 3))))',
            'return nn.softmax(x, dim=dim)',
            '"""Sum over `dim` accumulated in float64 (Jittor\'s CPU reductions add one term after another',
            'in the input type, which over 50257 words loses digits)."""',
            'return x.float64().sum(dim=dim)',
            'return x.float64().mean(dim=dim)',
            'return x.stop_grad()',
            'return x.max(dim=-1, keepdims=True)',
        ],
    },
    'optim.py': {
        'torch': [
            'The reference AdamW (examples/NLG/src/optimizer.py) differs from jt.optim.AdamW: bias',
            'import jt',
            'super().__init__(params, defaults)',
            'return self.state[p]',
            'return [(p, p.grad) for p in group["params"] if p.grad is not None]',
            '@jt.no_grad()',
            'def step(self, closure=None):',
            'state["exp_avg"] = jt.zeros_like(p, dtype=jt.float32)',
            'state["exp_avg_sq"] = jt.zeros_like(p, dtype=jt.float32)',
            'exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)',
            'exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)',
            'denom = exp_avg_sq.sqrt().add_(group["eps"])',
            'p.addcdiv_(exp_avg, denom, value=-step_size)',
            'p.add_(p, alpha=-group["lr"] * group["weight_decay"])',
            'out[f"exp_avg/{name}"] = state["exp_avg"].cpu().numpy()',
            'out[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].cpu().numpy()',
            'state["exp_avg"] = jt.from_numpy(arrays[f"exp_avg/{name}"]).to(p.device)',
            'state["exp_avg_sq"] = jt.from_numpy(arrays[f"exp_avg_sq/{name}"]).to(p.device)',
            '"""Global L2 norm of the gradients (a device scalar, no host sync); clips when max_norm > 0."""',
            'total_norm = jt.linalg.vector_norm(jt.stack([jt.linalg.vector_norm(g.float32()) for g in grads]))',
            'clip_coef = jt.clamp(max_norm / (total_norm + 1e-6), max=1.0)',
            'g.mul_(clip_coef.to(g.dtype))',
        ],
        'jittor': [
            'The reference AdamW (examples/NLG/src/optimizer.py) differs from jittor.optim.AdamW: bias',
            'Gradients accumulate in the optimizer (`backward(loss)` per micro-batch, then `step()`).',
            'from .runtime import jt',
            'super().__init__(params, lr)',
            'for group in self.param_groups:',
            'for key, value in defaults.items():',
            'group.setdefault(key, value)',
            'self.state = {}  # id(parameter) -> its moments, as torch.optim.Optimizer.state',
            'return self.state.setdefault(id(p), {})',
            'return [(p, g) for p, g in zip(group["params"], group["grads"]) if not p.is_stop_grad()]',
            'def step(self, loss=None, retain_graph=False):',
            'self.pre_step(loss, retain_graph)',
            'state["exp_avg"] = jt.zeros(p.shape, "float32").stop_grad()',
            'state["exp_avg_sq"] = jt.zeros(p.shape, "float32").stop_grad()',
            'exp_avg.update(exp_avg * beta1 + grad * (1.0 - beta1))',
            'exp_avg_sq.update(exp_avg_sq * beta2 + grad * grad * (1.0 - beta2))',
            'denom = exp_avg_sq.sqrt() + group["eps"]',
            'new_p = p - step_size * exp_avg / denom',
            'new_p = new_p - group["lr"] * group["weight_decay"] * new_p',
            'p.update(new_p.cast(p.dtype))',
            'self.post_step()',
            'out[f"exp_avg/{name}"] = state["exp_avg"].numpy()',
            'out[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].numpy()',
            'state["exp_avg"] = jt.array(arrays[f"exp_avg/{name}"]).stop_grad()',
            'state["exp_avg_sq"] = jt.array(arrays[f"exp_avg_sq/{name}"]).stop_grad()',
            '"""Global L2 norm of the accumulated gradients (a lazy scalar); clips when max_norm > 0."""',
            'total_norm = jt.sqrt(sum((g.float32() * g.float32()).sum() for g in grads))',
            'clip_coef = jt.minimum(max_norm / (total_norm + 1e-6), 1.0)',
            'g.update(g * clip_coef.cast(g.dtype))',
        ],
    },
    'train.py': {
        'torch': [
            'import jt',
            'AUTOCAST_DTYPES = {"bf16": jt.bfloat16, "fp16": jt.float16}',
            'class TorchBackend:',
            'name = "jt"',
            'if args.device == "cuda" and not jt.cuda.is_available():',
            'raise RuntimeError("--device cuda requested but jt sees no CUDA GPU")',
            'self.device, self.seed = jt.device(args.device), args.random_seed',
            'self.model.to(self.device)',
            'self.forward = jt.compile(self.model) if getattr(args, "compile", False) else self.model',
            'self.autocast_dtype = AUTOCAST_DTYPES.get(args.precision)',
            'self.scaler = jt.amp.GradScaler("cuda") if args.precision == "fp16" else None',
            'return jt.autocast(self.device.type, dtype=self.autocast_dtype,',
            'enabled=self.autocast_dtype is not None)',
            'return {k: jt.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)',
            'for k, v in batch.items()}',
            'jt.manual_seed(step_seed(self.seed, step))',
            'scaled = loss * loss_scale',
            '(self.scaler.scale(scaled) if self.scaler else scaled).backward()',
            'return loss.detach()',
            'if self.scaler:',
            'self.scaler.unscale_(self.optimizer)',
            'if self.scaler:',
            'self.scaler.step(self.optimizer)',
            'self.scaler.update()',
            'else:',
            'self.optimizer.zero_grad(set_to_none=True)',
            '@jt.no_grad()',
            'with self.autocast():',
            '"""Device scalars -> Python floats in one transfer (the loop\'s only host sync)."""',
            'return jt.stack([v.float32() for v in values]).cpu().tolist()',
            'return isinstance(exc, jt.cuda.OutOfMemoryError)',
        ],
        'jittor': [
            'from . import runtime',
            'from .precision import autocast',
            'from .runtime import jt',
            'COMPUTE_DTYPES = {"bf16": "bfloat16"}',
            'class JittorBackend:',
            'name = "jittor"',
            'runtime.use_device(args.device)',
            'if args.precision == "fp16":',
            'raise ValueError("the jittor backend trains in fp32 or bf16 (--precision bf16); fp16 "',
            '"with loss scaling is available with --backend torch")',
            'self.compute_dtype = COMPUTE_DTYPES.get(args.precision)',
            'self.seed = args.random_seed',
            'self.forward = self.model  # what forward passes run through (no compile step: Jittor fuses)',
            'return autocast(self.compute_dtype)',
            'return {k: jt.array(np.ascontiguousarray(v)) for k, v in batch.items()}',
            'jt.set_seed(step_seed(self.seed, step))',
            'self.optimizer.backward(loss * loss_scale)',
            'loss = loss.detach()',
            'jt.sync([loss])  # run the forward now, so the graph behind the loss is not kept alive',
            'return loss',
            'jt.sync([grad_norm])',
            'jt.sync(list(self.params.values()))',
            'with jt.no_grad(), self.autocast():',
            'jt.sync([loss])',
            '"""Lazy scalars -> Python floats in one transfer (the loop\'s only host sync)."""',
            'return jt.concat([v.float32().reshape(1) for v in values]).numpy().tolist()',
            'return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()',
        ],
    },
    'beam.py': {
        'torch': [
            'The per-step rules work on whole (rows, V) tensors: no Python loop over rows and no host sync.',
            'Shapes stay fixed from step 1 on (histories are (rows, eval_len) with a validity mask rather',
            "than growing), which is what keeps Jittor's kernel cache warm in the twin.",
            'import jt',
            'kth = jt.topk(scores, k, dim=1).values[:, k - 1:k]',
            'level = (scores > kth).long() * 2 + (scores == kth).long()  # 2 above, 1 tied with kth',
            'key = level * n + (n - 1 - jt.arange(n, device=scores.device))[None, :]',
            'kept = jt.topk(key, k, dim=1).indices',
            'rank = ahead.long().sum(2)  # how many kept entries go before each one',
            'order = jt.zeros_like(kept).scatter_(1, rank, kept)',
            'padded = jt.cat([scores, scores.new_full((rows, n_blocks * BLOCK - n), NEG_INF)], dim=1)',
            '_, best_blocks = top_k_small(blocks.max(dim=2).values, min(k, n_blocks))',
            'best_blocks = jt.sort(best_blocks, dim=1).values  # index order = flat index order',
            'pool = blocks.gather(1, best_blocks[:, :, None].expand(-1, -1, BLOCK)).reshape(rows, -1)',
            '+ jt.arange(BLOCK, device=scores.device)[None, None, :]).reshape(rows, -1)',
            'index = jt.where(valid, tokens, jt.full_like(tokens, vocab_size))  # spare column V',
            'mask = jt.zeros(tokens.shape[0], vocab_size + 1, dtype=jt.bool, device=tokens.device)',
            'return mask.scatter_(1, index, True)[:, :vocab_size]',
            'columns = jt.arange(history.shape[1], device=history.device)[None, :]',
            'return token_mask(history, (columns < cur_len).expand_as(history), vocab_size)',
            'return jt.zeros(history.shape[0], vocab_size, dtype=jt.bool, device=history.device)',
            'starts = jt.arange(width, device=history.device)[None, :]',
            'logits = jt.where(seen, jt.where(logits < 0, logits * p, logits / p), logits)',
            'logits = jt.where(eos_columns[None, :], jt.full_like(logits, NEG_INF), logits)',
            'logits = jt.where(banned, jt.full_like(logits, NEG_INF), logits)',
            'def __init__(self, batch, eval_len, length_penalty, device):',
            'self.score = jt.full((batch,), NEG_INF, device=device)',
            'self.found = jt.zeros(batch, dtype=jt.bool, device=device)',
            'self.sequence = jt.zeros(batch, eval_len, dtype=jt.long, device=device)',
            'normalised = beam_scores.double() / length_divisor(length, self.length_penalty)',
            'score = jt.where(finished, normalised.float32(), jt.full_like(beam_scores, NEG_INF))',
            'top = score.max(dim=1).values',
            'columns = jt.arange(beam, device=score.device)[None, :]',
            'first = jt.where(finished & (score == top[:, None]), columns,',
            'jt.full_like(columns, beam)).min(dim=1).values',
            'rows = jt.arange(batch, device=score.device) * beam + first.clamp(max=beam - 1)',
            'self.sequence = jt.where(better[:, None], history[rows], self.sequence)',
            'self.score = jt.where(better, top, self.score)',
            'return jt.where(finished, jt.full_like(beam_scores, NEG_INF), beam_scores)',
            'return [tuple(jt.cat([x, x.new_zeros(*x.shape[:2], extra, x.shape[3])], dim=2)',
            'return [tuple(x.index_select(0, rows) for x in layer) for layer in past]',
            'device = next(model.parameters()).device',
            'query = jt.as_tensor(query, dtype=jt.long, device=device)',
            'query_len = jt.as_tensor(query_len, dtype=jt.long, device=device)',
            'query = jt.cat([query, query.new_zeros(batch, width - query_width)], dim=1)',
            'eos_columns = jt.zeros(vocab_size, dtype=jt.bool, device=device)',
            'queries = jt.arange(batch, device=device)',
            'beam_scores = jt.zeros(batch, 1, device=device)',
            'history = jt.zeros(batch, eval_len, dtype=jt.long, device=device)',
            'best = BestCandidates(batch, eval_len, settings.length_penalty, device)',
            'logprob = jt.log(jt.softmax(scores, dim=-1))',
            'history = history.index_select(0, source)',
            'best.offer(beam_scores, history, eval_len, jt.ones_like(beam_scores, dtype=jt.bool))',
            'return best.sequence',
        ],
        'jittor': [
            'The per-step rules work on whole (rows, V) tensors: no Python loop over rows. Shapes stay',
            'fixed from step 1 on (histories are (rows, eval_len) with a validity mask rather than growing),',
            "so Jittor compiles each step's kernels once. Jittor is lazy: the loop state is synced once per",
            "step, otherwise the graph would keep every step's cache alive until the end.",
            "Index tensors are int32 here (Jittor's default index type; keys below stay under 3 * K * V).",
            'from .runtime import jt',
            'kth = jt.topk(scores, k, dim=1)[0][:, k - 1:k]',
            'level = (scores > kth).int32() * 2 + (scores == kth).int32()  # 2 above, 1 tied with kth',
            'key = level * n + (n - 1 - jt.arange(n).int32())[None, :]',
            'kept = jt.topk(key, k, dim=1)[1].int32()',
            'rank = ahead.int32().sum(2)  # how many kept entries go before each one',
            'order = jt.zeros_like(kept).scatter(1, rank, kept)',
            'padded = jt.concat([scores, jt.full((rows, n_blocks * BLOCK - n), NEG_INF)], dim=1)',
            '_, best_blocks = top_k_small(blocks.max(dim=2), min(k, n_blocks))',
            'best_blocks = jt.argsort(best_blocks, dim=1)[1]  # index order = flat index order',
            'pool = blocks.gather(1, best_blocks[:, :, None].expand(rows, best_blocks.shape[1], BLOCK))',
            'pool = pool.reshape(rows, -1)',
            '+ jt.arange(BLOCK).int32()[None, None, :]).reshape(rows, -1)',
            'index = jt.ternary(valid, tokens, jt.full_like(tokens, vocab_size))  # spare column V',
            'mask = jt.zeros((tokens.shape[0], vocab_size + 1), dtype="bool")',
            'return mask.scatter(1, index, jt.array(True))[:, :vocab_size]',
            'columns = jt.arange(history.shape[1]).int32()[None, :]',
            'return token_mask(history, (columns < cur_len).expand(history.shape), vocab_size)',
            'return jt.zeros((history.shape[0], vocab_size), dtype="bool")',
            'starts = jt.arange(width).int32()[None, :]',
            'logits = jt.ternary(seen, jt.ternary(logits < 0, logits * p, logits / p), logits)',
            'logits = jt.ternary(eos_columns[None, :], jt.full_like(logits, NEG_INF), logits)',
            'logits = jt.ternary(banned, jt.full_like(logits, NEG_INF), logits)',
            'def __init__(self, batch, eval_len, length_penalty):',
            'self.score = jt.full((batch,), NEG_INF)',
            'self.found = jt.zeros((batch,), dtype="bool")',
            'self.sequence = jt.zeros((batch, eval_len), dtype="int32")',
            'normalised = beam_scores.float64() / length_divisor(length, self.length_penalty)',
            'normalised.sync()  # fused with the cast below, Jittor would divide in float32 after all',
            'score = jt.ternary(finished, normalised.float32(), jt.full_like(beam_scores, NEG_INF))',
            'top = score.max(dim=1)',
            'columns = jt.arange(beam).int32()[None, :].expand(batch, beam)',
            'first = jt.ternary(finished & (score == top[:, None]), columns,',
            'jt.full_like(columns, beam)).min(dim=1)',
            'rows = jt.arange(batch).int32() * beam + first.clamp(max_v=beam - 1)',
            'self.sequence = jt.ternary(better[:, None], history[rows], self.sequence)',
            'self.score = jt.ternary(better, top, self.score)',
            'return jt.ternary(finished, jt.full_like(beam_scores, NEG_INF), beam_scores)',
            'def state(self):',
            'return [self.score, self.found, self.sequence]',
            'return [tuple(jt.concat([x, jt.zeros((x.shape[0], x.shape[1], extra, x.shape[3]),',
            'dtype=x.dtype)], dim=2)',
            'return [tuple(jt.index_select(x, 0, rows) for x in layer) for layer in past]',
            'query = jt.array(query).int32()',
            'query_len = jt.array(query_len).int32()',
            'query = jt.concat([query, jt.zeros((batch, width - query_width), dtype="int32")], dim=1)',
            'eos_columns = jt.zeros((vocab_size,), dtype="bool")',
            'queries = jt.arange(batch).int32()',
            'beam_scores = jt.zeros((batch, 1))',
            'history = jt.zeros((batch, eval_len), dtype="int32")',
            'best = BestCandidates(batch, eval_len, settings.length_penalty)',
            'logprob = jt.log(jt.nn.softmax(scores, dim=-1))',
            'history = jt.index_select(history, 0, source)',
            'jt.sync([logits, beam_scores, history] + best.state() + [x for kv in past for x in kv])',
            'best.offer(beam_scores, history, eval_len, jt.ones_like(beam_scores).bool())',
            'return best.sequence.int64()',
        ],
    },
    'generate.py': {
        'torch': [
            'import jt',
            'device = next(model.parameters()).device',
            'tokens = jt.from_numpy(prompt).to(device)',
            'feed = streams.step(logits[:, -1].float32().cpu().numpy())',
            'tokens = jt.from_numpy(feed[:, None]).to(device)',
        ],
        'jittor': [
            'from .runtime import jt',
            'tokens = jt.array(prompt)',
            'feed = streams.step(logits[:, -1].float32().numpy())',
            'tokens = jt.array(feed[:, None])',
        ],
    },
}


@pytest.mark.parametrize("name", TWIN_FILES)
def test_twins_differ_only_where_the_frameworks_do(name):
    assert twin_differences(ROOT, name, ALLOWED.get(name, {})) == []


def test_a_drifted_twin_is_reported(tmp_path):
    for side in ("torch_impl", "jittor_impl"):
        os.makedirs(tmp_path / side)
        shutil.copy(os.path.join(ROOT, side, "lora.py"), tmp_path / side / "lora.py")
    assert twin_differences(str(tmp_path), "lora.py", ALLOWED["lora.py"]) == []
    path = tmp_path / "jittor_impl" / "lora.py"
    text = path.read_text()
    assert "self.scaling = lora_alpha / r\n" in text
    path.write_text(text.replace("self.scaling = lora_alpha / r\n", "self.scaling = lora_alpha / r / 2\n"))
    problems = twin_differences(str(tmp_path), "lora.py", ALLOWED["lora.py"])
    assert "jittor_impl/lora.py: drifted: self.scaling = lora_alpha / r / 2" in problems
    assert "torch_impl/lora.py: drifted: self.scaling = lora_alpha / r" in problems
