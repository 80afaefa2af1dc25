"""agenticrec: a hand-written PyTorch reference implementation of AgenticRec (arXiv 2603.21613)."""

__version__ = "0.1.0"
