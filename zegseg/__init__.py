"""zegseg: open-vocabulary / zero-shot semantic segmentation on Detectron2.

Importing the package registers its datasets, dataset mappers, evaluators and meta-architectures.
"""
from .version import __version__
from .config import add_zegseg_config

__all__ = ["__version__", "add_zegseg_config"]
