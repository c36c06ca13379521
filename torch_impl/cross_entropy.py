"""Cross-entropy over bf16/fp16 logits without a float32 copy of them (mixed precision only).

`lm_loss` upcasts the logits before `F.cross_entropy`; for gpt2.md at batch 8 x 512 that is an
823 MB float32 copy of the (8, 512, 50257) logits plus its float32 gradient, written and read
once each per step. Here the loss and the gradient are computed in float32 a block of rows at a
time from the low-precision logits, so only one block's float32 values exist at once and the
gradient is written once, in the logits' own dtype. Same function as `F.cross_entropy(
logits.float(), labels, ignore_index=-1, label_smoothing=s, reduction="none")`, with float32
arithmetic per row (tests/test_cross_entropy.py compares the two). Float32 logits never come
here: the fp32 path keeps torch's own kernel.
"""
import torch

IGNORE_INDEX = -1
ROWS_PER_BLOCK = 1024


def _block_logprob_terms(block, labels, smoothing):
    """float32 (lse, label logit, mean logit) of a block of rows."""
    x = block.float()
    lse = torch.logsumexp(x, dim=-1)
    picked = x.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    mean = x.mean(dim=-1) if smoothing > 0 else None
    return lse, picked, mean


class _LowPrecisionCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, smoothing):
        losses, lses = [], []
        for start in range(0, logits.shape[0], ROWS_PER_BLOCK):
            rows = slice(start, start + ROWS_PER_BLOCK)
            lse, picked, mean = _block_logprob_terms(logits[rows], labels[rows], smoothing)
            loss = lse - picked
            if smoothing > 0:
                loss = (1.0 - smoothing) * loss + smoothing * (lse - mean)
            losses.append(loss)
            lses.append(lse)
        loss = torch.cat(losses).masked_fill(labels == IGNORE_INDEX, 0.0)
        ctx.save_for_backward(logits, labels, torch.cat(lses))
        ctx.smoothing = smoothing
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, labels, lse = ctx.saved_tensors
        s, vocab = ctx.smoothing, logits.shape[1]
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        scale = grad_loss.float().masked_fill(labels == IGNORE_INDEX, 0.0)
        for start in range(0, logits.shape[0], ROWS_PER_BLOCK):
            rows = slice(start, start + ROWS_PER_BLOCK)
            g = torch.exp(logits[rows].float() - lse[rows, None])  # softmax
            if s > 0:
                g -= s / vocab
            g.scatter_add_(1, labels[rows].clamp(min=0).unsqueeze(1),
                           torch.full((g.shape[0], 1), -(1.0 - s), device=g.device))
            grad[rows] = g * scale[rows, None]
        return grad, None, None


def low_precision_cross_entropy(logits, labels, smoothing=0.0):
    """Per-row losses (float32) of 2-D low-precision `logits`; rows labelled -1 give 0."""
    return _LowPrecisionCrossEntropy.apply(logits, labels, float(smoothing))
