"""zegseg: open-vocabulary / zero-shot semantic segmentation on Detectron2.

Importing the package registers its datasets, dataset mappers, evaluators and meta-architectures.
"""
from . import data, evaluation, modeling  # noqa: F401  (registration happens on import)
from .config import add_zegseg_config
from .predictor import Predictor
from .version import __version__

__all__ = ["Predictor", "__version__", "add_zegseg_config"]
