"""Batch-aligned preference training on TRL: batch plans (``sampling``), config and trainer subclasses
(``trainers``), one prompt encoding per pair (``shared_prompt``) and the entry points (``run``).
"""
