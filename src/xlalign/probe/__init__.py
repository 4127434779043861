"""The NoMIRACL-style binary RAG probe (batch-alignment paper §3.2): samples, split, prompts (``build``) and
a run's datasets (``dataset``).
"""
