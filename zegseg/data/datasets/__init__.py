"""Dataset registrations: importing this package registers every built-in dataset family."""
from . import (  # noqa: F401
    register_ade20k_150,
    register_ade20k_full,
    register_captions,
    register_coco_stuff,
    register_pcontext,
    register_toy,
    register_voc,
)
from .common import dataset_root, load_class_list, read_label

__all__ = ["dataset_root", "load_class_list", "read_label"]
