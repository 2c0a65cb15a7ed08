"""Named real assets (models, corpora, knowledge graphs, Chinese character data)."""
from .install import install
from .models import MODEL_ASSETS, load_config, load_model, model_path
from .registry import ASSETS, Asset, asset_path, get, plmkit_home

__all__ = ["ASSETS", "MODEL_ASSETS", "Asset", "asset_path", "get", "install", "load_config", "load_model",
           "model_path", "plmkit_home"]
