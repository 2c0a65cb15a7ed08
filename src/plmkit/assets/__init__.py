"""Named real assets (models, corpora, knowledge graphs, Chinese character data)."""
from .install import install
from .models import MODEL_ASSETS, checkpoint_keys, load_config, load_model, missing_head, model_path
from .registry import ASSETS, Asset, asset_path, get, plmkit_home

__all__ = ["ASSETS", "MODEL_ASSETS", "Asset", "asset_path", "checkpoint_keys", "get", "install", "load_config", "load_model", "missing_head",
           "model_path", "plmkit_home"]
