"""Pick a backend by name: the one package that imports both twins, so that shared/ imports none.

`training_backend(name)` gives shared/train/trainer.py its backend class (one row of TWIN_CLASSES,
as are the classifier, reward, DPO and PPO backends); `load_inference_model(args)`
builds the model an inference script names (shared/decode/inference_model.py holds its flags) with its
backend's decoding functions; `classifier_backend(name)` and `load_classifier(...)` do the same
for the classification task (scripts/classify_ft.py, scripts/classify.py), `reward_backend(name)`,
`dpo_backend(name)` and `ppo_backend(name)` for preference tuning (scripts/reward_ft.py,
scripts/dpo_ft.py, scripts/ppo_ft.py). Each imports only the framework it is asked for.
"""
import functools
import importlib

from shared.tasks.classify_task import card_config
from shared.decode.inference_model import InferenceModel, load_checkpoints
from shared.train.train_args import BACKENDS, model_config


# role -> (the twins' module, the class it holds): one row per kind of training backend.
TWIN_CLASSES = {
    "training": ("train", {"torch": "TorchBackend", "jittor": "JittorBackend"}),
    "classifier": ("classifier", {"torch": "ClassifierBackend", "jittor": "ClassifierBackend"}),
    "reward": ("preference", {"torch": "RewardBackend", "jittor": "RewardBackend"}),
    "dpo": ("preference", {"torch": "DPOBackend", "jittor": "DPOBackend"}),
    "ppo": ("preference", {"torch": "PPOBackend", "jittor": "PPOBackend"}),
}


def twin_class(role: str, name: str):
    """The class of `role` (a key of TWIN_CLASSES) in backend `name`'s twin, importing only that twin."""
    module, classes = TWIN_CLASSES[role]
    if name not in classes:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    return getattr(importlib.import_module(f"{name}_impl.{module}"), classes[name])


# The selectors the scripts take (`name -> class`), one per role.
training_backend = functools.partial(twin_class, "training")
classifier_backend = functools.partial(twin_class, "classifier")
reward_backend = functools.partial(twin_class, "reward")
dpo_backend = functools.partial(twin_class, "dpo")
ppo_backend = functools.partial(twin_class, "ppo")


def load_inference_model(args) -> InferenceModel:
    """Build the model of `args` on `args.device` and load its checkpoints (base, then LoRA)."""
    config = model_config(args)
    if args.backend == "torch":
        import torch
        from torch_impl import beam, sampler
        from torch_impl.model import GPT2LMModel
        if args.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but torch sees no CUDA GPU")
        model = GPT2LMModel(config)
        load_checkpoints(model, args)
        model.to(args.device)

        def to_numpy(x):
            return x.cpu().numpy()
    elif args.backend == "jittor":
        from jittor_impl import beam, runtime, sampler
        from jittor_impl.model import GPT2LMModel
        runtime.use_device(args.device)
        model = GPT2LMModel(config)
        load_checkpoints(model, args)

        def to_numpy(x):
            return x.numpy()
    else:
        raise ValueError(f"unknown backend {args.backend!r}; choose one of {BACKENDS}")
    model.eval()
    return InferenceModel(args.backend, model, beam.beam_search, sampler.generate, to_numpy)


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
