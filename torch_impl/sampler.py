"""Sampling generation with a KV cache, in PyTorch (twin: jittor_impl/sampler.py).

The model runs here; filtering and the draw happen in numpy (`shared/decode/sampling.py`), so both
backends sample the same text from the same weights. The cache grows by concatenation (`past`
without `len_past`): all samples share the prompt and advance one token per step.
"""
import torch  # framework

from shared.model.peft_methods import input_positions
from shared.decode.sampling import SampleStreams, SamplingSettings, prompt_batch


def generate(model, prompt_ids, settings: SamplingSettings, seed: int, num_samples: int = 1,
             on_token=None):
    """`num_samples` continuations of `prompt_ids` (lists of ids, eos not included);
    `on_token(row, token)` sees each token as it is drawn."""
    with torch.no_grad():
        return _generate(model, prompt_ids, settings, seed, num_samples, on_token)


def _generate(model, prompt_ids, settings, seed, num_samples, on_token):
    model.eval()
    device = next(model.parameters()).device  # framework
    prompt = prompt_batch(prompt_ids, settings, input_positions(model.config), num_samples)
    streams = SampleStreams(settings, seed, num_samples, on_token)
    tokens = torch.from_numpy(prompt).to(device)  # framework
    past = None
    while True:
        logits, past = model(tokens, past=past)
        feed = streams.step(logits[:, -1].float().cpu().numpy())  # framework
        if streams.done:
            return streams.tokens
        tokens = torch.from_numpy(feed[:, None]).to(device)  # framework
