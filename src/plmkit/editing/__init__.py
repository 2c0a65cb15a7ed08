"""Model editing. EREN: edits as notes in a notebook, read by the model when relevant."""
from .eren import EREN, Answer, ERENConfig, Verdict
from .notebook import Hit, Note, Notebook
from .reader import Reader
from .retrieval import ExactIndex, SentenceEncoder, VectorIndex

__all__ = ["EREN", "Answer", "ERENConfig", "ExactIndex", "Hit", "Note", "Notebook", "Reader", "SentenceEncoder",
           "Verdict", "VectorIndex"]
