"""A fast, content-complete ``datasets`` fingerprint for tokenizers backed by the ``tokenizers`` library.

TRL's trainers tokenize their training set with ``Dataset.map``, and ``datasets`` fingerprints every
map by pickling its function and arguments with its own ``dill`` pickler: ORPO's ``tokenize_row`` is a
bound method, so the trainer and its tokenizer are pickled, and ``maybe_apply_chat_template`` gets the
tokenizer as an argument. A transformers 5 ``TokenizersBackend`` keeps Python copies of its vocabulary
and merges (``_vocab``, ``_merges``: 262,144 entries and ~500,000 pairs for Gemma-3) next to the Rust
tokenizer, and the pure-Python pickler walks them entry by entry: 9.2 s per hash of Gemma-3's
tokenizer measured here, two hashes per ORPO training, and a cProfile of a 1-step ORPO training call
spent 72 of its 110 s in fingerprinting (``scripts/bench_fingerprint.py`` prints the figures).

``register_tokenizer_hash(tok)`` makes ``datasets`` hash such a tokenizer by the sha256 of the Rust
tokenizer's full JSON serialization (vocabulary, merges, normalizer, pre-tokenizer, post-processor,
added tokens; with truncation and padding switched off for the call, as ``datasets`` itself does for
stability) in place of ``_tokenizer``, ``_vocab`` and ``_merges``, and by every other attribute as
``datasets`` hashes it. What the tokenizer computes still decides the fingerprint: a different
vocabulary, special token, padding side or chat template gives a different one. It uses
``datasets.utils._dill.Pickler.dispatch``, the registry ``datasets`` fills with its own reducers
(tested against datasets 5.2); a tokenizer without a Rust backend keeps the stock reducer.
"""

from __future__ import annotations

import hashlib

# The attributes the Rust tokenizer's serialization covers (transformers 5's TokenizersBackend).
REPLACED = ("_tokenizer", "_vocab", "_merges")


def _backend(tok):
    """The Rust tokenizer behind ``tok``, or None."""
    backend = getattr(tok, "_tokenizer", None)
    return backend if hasattr(backend, "to_str") else None


def backend_digest(tok) -> str | None:
    """sha256 of the Rust tokenizer's JSON with truncation and padding off; None without one."""
    backend = _backend(tok)
    if backend is None:
        return None
    truncation, padding = getattr(backend, "truncation", None), getattr(backend, "padding", None)
    try:
        if truncation is not None:
            backend.no_truncation()
        if padding is not None:
            backend.no_padding()
        text = backend.to_str()
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)
    return hashlib.sha256(text.encode()).hexdigest()


def _save_tokenizer(pickler, obj):
    digest = backend_digest(obj)
    state = {k: v for k, v in obj.__dict__.items() if k not in REPLACED}
    # datasets' own reducer drops these caches for stable hashes; so do we
    for volatile in ("cache", "deprecation_warnings"):
        if isinstance(state.get(volatile), dict):
            state[volatile] = {}
    state["xlalign_backend_sha256"] = digest
    pickler.save_reduce(type(obj), (), state=state, obj=obj)


def register_tokenizer_hash(tok) -> bool:
    """Hash ``tok``'s class with ``_save_tokenizer`` in ``datasets`` fingerprints (idempotent). False
    (nothing registered) where the tokenizer has no Rust backend or ``datasets`` lacks the registry."""
    if _backend(tok) is None:  # checked without serializing it (a second per call for Gemma-3)
        return False
    try:
        from datasets.utils._dill import Pickler
    except ImportError:
        return False
    dispatch = getattr(Pickler, "dispatch", None)
    if dispatch is None:
        return False
    dispatch[type(tok)] = _save_tokenizer
    return True
