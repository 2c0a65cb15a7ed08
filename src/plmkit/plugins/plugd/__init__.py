"""PlugD: encode each document once into a plugin, reuse it for every query and task.

The frozen backbone encodes a document; a small map network turns its last hidden states into the plugin,
which the top half of the layers attend to (projected by each layer's own key/value weights) while task
adapters train with the backbone frozen. Plugins are stored on disk by content hash.

>>> from plmkit.plugins import plugd
>>> plugd.attach(model, plugd.PlugDConfig())                                   # doctest: +SKIP
>>> examples = plugd.tasks.pretraining_examples(passages, 2000)                # doctest: +SKIP
>>> plugd.pretrain_map_net(model, tok, examples, TrainConfig("run"))        # doctest: +SKIP
>>> store = plugd.PluginStore("plugins", plugd.identity(model))              # doctest: +SKIP
>>> plugin = store.get_or_encode(model, tok, "doc-1", text)                  # doctest: +SKIP
>>> with plugd.plugged(model, [plugin]):                                      # doctest: +SKIP
...     model.generate(**tok("Question: ...\\nAnswer:", return_tensors="pt"))
"""
from . import tasks
from .config import PlugDConfig
from .model import (
    MapNet,
    attach,
    chosen_layers,
    config_of,
    detach,
    document_states,
    encode,
    identity,
    load,
    make_plugins,
    map_net,
    pad,
    plugged,
    pool,
    save,
)
from .store import PluginStore, StoredPlugin
from .train import add_adapters, lora_targets, plugd_loss, pretrain_map_net, train_adapter

__all__ = [
    "MapNet", "PlugDConfig", "PluginStore", "StoredPlugin", "add_adapters", "attach", "chosen_layers", "config_of",
    "detach", "document_states", "encode", "identity", "load", "lora_targets", "make_plugins", "map_net", "pad",
    "plugd_loss", "plugged", "pool", "pretrain_map_net", "save", "tasks", "train_adapter",
]
