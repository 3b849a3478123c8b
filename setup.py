"""zegseg: open-vocabulary / zero-shot semantic segmentation as a Detectron2 project extension.

Install with ``bash tools/install.sh`` (it also installs PyTorch and detectron2, which pip alone cannot);
exact versions live in ``constraints.txt``.
"""
from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec((Path(__file__).parent / "zegseg" / "version.py").read_text(), version)

setup(
    name="zegseg",
    version=version["__version__"],
    description="Open-vocabulary and zero-shot semantic segmentation on Detectron2 (ZegFormer, two-stage CLIP)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["zegseg", "zegseg.*"]),
    package_data={"zegseg": ["**/*.json", "**/*.txt", "**/*.pt", "**/*.pth", "**/*.md"]},
    include_package_data=True,
    install_requires=[
        # detectron2 is installed by tools/install.sh (no official PyPI release); its requirements follow.
        "torch>=2.0",
        "torchvision",
        "clip-anytorch",
        "setuptools<81",
        "numpy",
        "scipy",
        "fvcore",
        "iopath",
        "pycocotools",
        "opencv-python",
        "Pillow",
        "tqdm",
        "tabulate",
        "termcolor",
        "yacs",
        "omegaconf",
        "hydra-core",
        "cloudpickle",
        "matplotlib",
        "tensorboard",
        "black",
        "packaging",
    ],
    # "app": demo/app.py; "dev": tests (the browser test runs the app) and lint
    extras_require={"app": ["gradio"], "dev": ["pytest", "ruff", "gradio", "playwright"]},
)
