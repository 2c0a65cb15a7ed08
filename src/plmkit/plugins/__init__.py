"""Plug-in modules added to a frozen model: Variator's compression plugins (and, to come, PlugD's
document plugins). Each plugin wraps a module of the model and can be taken off again."""
