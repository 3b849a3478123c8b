"""zegseg: open-vocabulary / zero-shot semantic segmentation on Detectron2.

Importing the package registers its datasets, dataset mappers, evaluators and meta-architectures.
"""
from .utils.known_warnings import known_warnings_silenced

with known_warnings_silenced():  # detectron2's and clip's import-time deprecation notices
    from . import data, evaluation, modeling  # noqa: F401  (registration happens on import)
    from .config import add_zegseg_config
    from .modeling.vocabulary import VocabularyError
    from .predictor import Predictor
    from .version import __version__

__all__ = ["Predictor", "VocabularyError", "__version__", "add_zegseg_config"]
