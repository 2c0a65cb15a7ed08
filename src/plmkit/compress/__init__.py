"""Methods that make a model cheaper to run: MoEfication (more to come: quantize, prune, distill)."""
