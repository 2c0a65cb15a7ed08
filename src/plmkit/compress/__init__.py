"""Methods that make a model cheaper to run: MoEfication, and token merging (a peer for Variator's
sequence compression; more to come: quantize, prune, distill)."""
