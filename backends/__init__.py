"""Pick a backend by name: the one package that imports both twins, so that shared/ imports none.

`training_backend(name)` gives shared/train/trainer.py its backend class; `load_inference_model(args)`
builds the model an inference script names (shared/decode/inference_model.py holds its flags) with its
backend's decoding functions; `classifier_backend(name)` and `load_classifier(...)` do the same
for the classification task (scripts/classify_ft.py, scripts/classify.py), `reward_backend(name)`,
`dpo_backend(name)` and `ppo_backend(name)` for preference tuning (scripts/reward_ft.py,
scripts/dpo_ft.py, scripts/ppo_ft.py). Each imports only the framework it is asked for.
"""
from shared.tasks.classify_task import card_config
from shared.decode.inference_model import InferenceModel, load_checkpoints
from shared.train.train_args import BACKENDS, model_config


def training_backend(name: str):
    """The training backend class (`TorchBackend` or `JittorBackend`) for shared/train/trainer.py."""
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


def classifier_backend(name: str):
    """The classification training backend class (`ClassifierBackend` of either twin)."""
    if name == "torch":
        from torch_impl.classifier import ClassifierBackend
        return ClassifierBackend
    if name == "jittor":
        from jittor_impl.classifier import ClassifierBackend
        return ClassifierBackend
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def reward_backend(name: str):
    """The reward model's training backend class (`RewardBackend` of either twin)."""
    if name == "torch":
        from torch_impl.preference import RewardBackend
        return RewardBackend
    if name == "jittor":
        from jittor_impl.preference import RewardBackend
        return RewardBackend
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def dpo_backend(name: str):
    """DPO's training backend class (`DPOBackend` of either twin)."""
    if name == "torch":
        from torch_impl.preference import DPOBackend
        return DPOBackend
    if name == "jittor":
        from jittor_impl.preference import DPOBackend
        return DPOBackend
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def ppo_backend(name: str):
    """PPO's training backend class (`PPOBackend` of either twin)."""
    if name == "torch":
        from torch_impl.preference import PPOBackend
        return PPOBackend
    if name == "jittor":
        from jittor_impl.preference import PPOBackend
        return PPOBackend
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def load_classifier(backend: str, device: str, card: dict):
    """The classifier a classify_ft.py model card describes, on `backend` and `device`, as its
    `predict_logits(batch) -> numpy (B, classes)`."""
    config = card_config(card)
    if backend == "torch":
        import torch
        from torch_impl.classifier import GPT2Classifier
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but torch sees no CUDA GPU")
        model = GPT2Classifier(config, len(card["labels"])).load_weight(card["checkpoint"])
        model.to(device).eval()

        def predict_logits(batch):
            with torch.no_grad():
                return model(*(torch.from_numpy(batch[k]).to(device)
                               for k in ("input", "length"))).float().cpu().numpy()
    elif backend == "jittor":
        from jittor_impl import runtime
        from jittor_impl.classifier import GPT2Classifier
        runtime.use_device(device)
        jt = runtime.jt
        model = GPT2Classifier(config, len(card["labels"])).load_weight(card["checkpoint"])
        model.eval()

        def predict_logits(batch):
            with jt.no_grad():
                return model(jt.array(batch["input"]), jt.array(batch["length"])).numpy()
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return predict_logits
