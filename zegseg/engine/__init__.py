from .preflight import preflight
from .setup_config import load_config, setup_cfg
from .trainer import ZegsegTrainer

__all__ = ["ZegsegTrainer", "load_config", "preflight", "setup_cfg"]
