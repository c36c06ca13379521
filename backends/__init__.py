"""Pick a backend by name: the one package that imports both twins, so that shared/ imports none.

`training_backend(name)` gives shared/trainer.py its backend class; `load_inference_model(args)`
builds the model an inference script names (shared/inference_model.py holds its flags) with its
backend's decoding functions. Each imports only the framework it is asked for.
"""
from shared.inference_model import InferenceModel, load_checkpoints
from shared.train_args import BACKENDS, model_config


def training_backend(name: str):
    """The training backend class (`TorchBackend` or `JittorBackend`) for shared/trainer.py."""
    if name == "torch":
        from torch_impl.train import TorchBackend
        return TorchBackend
    if name == "jittor":
        from jittor_impl.train import JittorBackend
        return JittorBackend
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def load_inference_model(args) -> InferenceModel:
    """Build the model of `args` on `args.device` and load its checkpoints (base, then LoRA)."""
    config = model_config(args)
    if args.backend == "torch":
        import torch
        from torch_impl import beam, generate
        from torch_impl.model import GPT2LMModel
        if args.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but torch sees no CUDA GPU")
        model = GPT2LMModel(config)
        load_checkpoints(model, args)
        model.to(args.device)

        def to_numpy(x):
            return x.cpu().numpy()
    elif args.backend == "jittor":
        from jittor_impl import beam, generate, runtime
        from jittor_impl.model import GPT2LMModel
        runtime.use_device(args.device)
        model = GPT2LMModel(config)
        load_checkpoints(model, args)

        def to_numpy(x):
            return x.numpy()
    else:
        raise ValueError(f"unknown backend {args.backend!r}; choose one of {BACKENDS}")
    model.eval()
    return InferenceModel(args.backend, model, beam.beam_search, generate.generate, to_numpy)
