"""Knowledge Plugin (map-tuning), in progress: a mapper from KG-embedding space to a model's input embeddings, the
injection of mapped entity vectors as pseudo-tokens before their mentions (any encoder or decoder, through a
forward pre-hook, undoable), and general map-tuning (mention-masked LM, the model frozen).

The plug-and-play protocol on fine-tuned downstream models, the entity questions, the controls, the CLI and the
recipe are not built yet (``plmkit list``: not yet).
"""
from .inject import Inserted, attach, detach, insert_vectors
from .mapper import Mapper, MapperConfig, embeddings_identity, load_mapper, save_mapper
from .maptune import MapTuneConfig, map_tune, mention_batch

__all__ = ["Inserted", "MapTuneConfig", "Mapper", "MapperConfig", "attach", "detach", "embeddings_identity",
           "insert_vectors", "load_mapper", "map_tune", "mention_batch", "save_mapper"]
