from .setup_config import setup_cfg
from .trainer import ZegsegTrainer

__all__ = ["ZegsegTrainer", "setup_cfg"]
