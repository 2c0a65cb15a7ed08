"""plmkit: make pretrained language models knowledgeable, editable, efficient, robust and understood."""
__version__ = "0.1.0"

from .assets import load_model
from .errors import ConfigError, MissingAssetError, PlmkitError, UnsupportedArchitectureError

__all__ = ["ConfigError", "MissingAssetError", "PlmkitError", "UnsupportedArchitectureError", "__version__",
           "load_model"]
