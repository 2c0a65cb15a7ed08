"""Chinese: sub-character tokenizers (SubChar) and realistic noisy input (READIN)."""
