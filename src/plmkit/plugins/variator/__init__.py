"""Variator: compression plugins that run each FFN on a k-times shorter sequence.

A plugin merges groups of k consecutive hidden states into one before the FFN and spreads the FFN's
output back over the group after it (see :mod:`plmkit.plugins.variator.plugin`). The backbone stays
frozen and reachable; plugins for several k are saved apart (a few MB each) and swapped on one loaded
model, chosen by workload.

>>> from plmkit.plugins import variator
>>> from plmkit.plugins.variator import VariatorConfig
>>> variator.attach(model, VariatorConfig(k=4, hidden=24))             # doctest: +SKIP
>>> variator.distill(model, data, TrainConfig(out_dir="run", max_steps=300), collate_fn=collate)  # doctest: +SKIP
>>> variator.save(model, "plugins/k4")                                  # doctest: +SKIP
>>> bank = variator.PluginBank(model, {2: "plugins/k2", 4: "plugins/k4"}, thresholds={2: 8, 4: 32})  # doctest: +SKIP
>>> bank.use_for(len(queue))                                            # doctest: +SKIP
"""
from .config import VariatorConfig
from .model import (
    PluginBank,
    attach,
    bypassed,
    config_of,
    detach,
    extra_parameters,
    load,
    plugged,
    plugin_parameters,
    read,
    save,
)
from .plugin import CompressionPlugin, MaskContext, VariatorFFN
from .train import distill, distillation_loss

unload = detach  # the name the plug-and-play docs use

__all__ = [
    "CompressionPlugin", "MaskContext", "PluginBank", "VariatorConfig", "VariatorFFN", "attach", "bypassed",
    "config_of", "detach", "distill", "distillation_loss", "extra_parameters", "load", "plugged",
    "plugin_parameters", "read", "save", "unload",
]
