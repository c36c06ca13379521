"""jittor-lora-align: GPT-2 + LoRA twinned in PyTorch and Jittor, with an alignment harness."""
from setuptools import find_packages, setup

setup(
    name="jittor-lora-align",
    version="0.1.0",
    description="GPT-2 with LoRA in PyTorch and Jittor, kept in lock-step by an alignment suite",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["shared", "shared.*", "torch_impl", "torch_impl.*",
                                    "jittor_impl", "jittor_impl.*", "backends", "backends.*",
                                    "alignment", "alignment.*"]),
    install_requires=[
        "jittor==1.3.11.0",
        "numpy<2",  # jittor 1.3.11 reads numpy's C structures with the 1.x layout
        "torch",
        "tiktoken",
        "pycocoevalcap",
        "matplotlib",
        "tqdm",
        "safetensors",
        "tensorboardX",
        "protobuf",
        "google-crc32c",
    ],
    # test: pytest and the real Hugging Face clients of the export/import tests (pinned as in
    # requirements-test.txt; torchvision for alignment.auto_diff comes from scripts/install.sh)
    extras_require={"test": ["pytest", "transformers==5.17.0", "peft==0.21.2"]},
)
