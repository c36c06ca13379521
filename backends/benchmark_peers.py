"""Other LoRA trainers of the same model, measured by backends/benchmark_steps.py beside this project.

Each peer builds its own GPT-2 of the card's shape with LoRA r=4 (alpha 32, dropout 0.1) on the
attention's fused projection, random weights, and returns one training step (forward, backward,
clipping at 1.0, optimizer step) as a function of the batch; the benchmark times it exactly as
it times this project's steps. Peers:
- `hf+peft`, `hf+peft+compile`: Hugging Face transformers' GPT2LMHeadModel (sdpa attention, no
  dropout outside LoRA) with peft's LoRA on `c_attn`, bf16 autocast, torch's fused AdamW (the
  fastest optimizer that stack offers); `+compile`: torch.compile of the model, default mode.
- `reference`, `reference+bf16`: microsoft/LoRA's examples/NLG model and loralib, imported from
  a checkout named by --reference_src (never copied into this project), with its own AdamW;
  as shipped (fp32), and under bf16 autocast.
"""
import importlib.util
import os
import sys

from shared.pipeline.benchmark_plan import PEERS


def _card_shape(config):
    return dict(n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head)


def _hf_peft(config, compile_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel
    hf_config = HFConfig(vocab_size=config.vocab_size, n_positions=config.n_positions,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         layer_norm_epsilon=config.layer_norm_epsilon, **_card_shape(config))
    hf_config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hf_config)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["c_attn"], fan_in_fan_out=True))
    model.cuda().train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-6,
                                  weight_decay=0.01, fused=True)
    forward = torch.compile(model) if compile_model else model

    def step(ids, labels, mask):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = forward(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                                 reduction="none")
        loss = (loss * mask.flatten()).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def _reference(config, reference_src, autocast):
    import torch
    src = os.path.join(reference_src, "examples", "NLG", "src")
    if not os.path.isdir(src) or not os.path.isdir(os.path.join(reference_src, "loralib")):
        raise FileNotFoundError(f"--reference_src {reference_src}: no examples/NLG/src and "
                                f"loralib in it (a checkout of github.com/microsoft/LoRA)")
    sys.path[:0] = [src, reference_src]
    import loralib
    from model import GPT2Config as RefConfig
    from model import GPT2LMModel as RefModel
    from optimizer import AdamW as RefAdamW
    ref_config = RefConfig(vocab_size_or_config_json_file=config.vocab_size,
                           n_positions=config.n_positions, n_ctx=config.n_positions,
                           lora_attn_dim=4, lora_attn_alpha=32, lora_dropout=0.1,
                           **_card_shape(config))
    model = RefModel(ref_config).cuda().train()
    loralib.mark_only_lora_as_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = RefAdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                         correct_bias=True)

    def step(ids, labels, mask):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(ids, lm_labels=labels, lm_mask=mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def peer_problem(name, device):
    """Why peer `name` cannot run here (None when it can): the peers train on CUDA only, and
    the Hugging Face ones need transformers and peft (looked up, not imported)."""
    if device != "cuda":
        return "the peers run on CUDA only"
    if name.startswith("reference"):
        return None
    missing = [m for m in ("transformers", "peft") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def build_peer(name, config, reference_src=None):
    """One training step of peer `name` (see PEERS) as `step(ids, labels, mask) -> loss`."""
    if name in ("hf+peft", "hf+peft+compile"):
        return _hf_peft(config, compile_model=name.endswith("+compile"))
    if name in ("reference", "reference+bf16"):
        if not reference_src:
            raise ValueError("the reference peers need --reference_src (a microsoft/LoRA checkout)")
        return _reference(config, reference_src, autocast=name.endswith("+bf16"))
    raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")
