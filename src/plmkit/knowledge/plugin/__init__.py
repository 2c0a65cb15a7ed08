"""Knowledge Plugin (map-tuning): a mapper from KG-embedding space to a model's input embeddings, the injection of
mapped entity vectors as pseudo-tokens before their mentions (any encoder or decoder, plain or peft, through a
forward pre-hook, undoable), general map-tuning (mention-masked LM, the model frozen), plug and play into
downstream models trained without knowledge with its controls, and task-specific map-tuning. See
docs/knowledge_plugin.md.
"""
from .inject import Inserted, attach, detach, insert_vectors
from .mapper import Mapper, MapperConfig, embeddings_identity, load_mapper, save_mapper
from .maptune import MapTuneConfig, map_tune, mention_batch, train_mapper
from .plug import CONTROLS, ZeroMapper, evaluate_controls, mention_loss, plugged, predict_classes, task_map_tune
from .records import plug_entities, plug_table, token_mentions, with_descriptions

__all__ = ["CONTROLS", "Inserted", "MapTuneConfig", "Mapper", "MapperConfig", "ZeroMapper", "attach", "detach",
           "embeddings_identity", "evaluate_controls", "insert_vectors", "load_mapper", "map_tune", "mention_batch",
           "mention_loss", "plug_entities", "plug_table", "plugged", "predict_classes", "save_mapper",
           "task_map_tune", "token_mentions", "train_mapper", "with_descriptions"]
