"""The tokenizer fingerprint TRL's Dataset.map calls get: fast, and still following what it computes."""

from __future__ import annotations

import pytest
from datasets.fingerprint import Hasher
from datasets.utils._dill import Pickler

from xlalign.training.fingerprint import _save_tokenizer, backend_digest, register_tokenizer_hash


@pytest.fixture
def fresh_tokenizer(tiny_profile, tiny_model_dir):
    from xlalign.models import load_tokenizer

    def load():
        return load_tokenizer(tiny_profile)

    return load


def test_registration_puts_the_reducer_in_datasets_registry(fresh_tokenizer):
    tok = fresh_tokenizer()
    assert register_tokenizer_hash(tok) is True
    assert Pickler.dispatch[type(tok)] is _save_tokenizer
    assert register_tokenizer_hash(None) is False


def test_equal_tokenizers_hash_equal_and_a_changed_one_differently(fresh_tokenizer):
    a, b = fresh_tokenizer(), fresh_tokenizer()
    register_tokenizer_hash(a)
    assert Hasher.hash(a) == Hasher.hash(b)
    b.padding_side = "right" if a.padding_side == "left" else "left"
    assert Hasher.hash(a) != Hasher.hash(b)
    c = fresh_tokenizer()
    c.add_tokens(["<xlalign-new-token>"])  # the Rust tokenizer changes
    assert Hasher.hash(a) != Hasher.hash(c)


def test_the_python_vocabulary_copy_is_replaced_by_the_backend_digest(fresh_tokenizer):
    a, b = fresh_tokenizer(), fresh_tokenizer()
    register_tokenizer_hash(a)
    b._vocab = {"only": 0}  # not what the tokenizer computes with: the Rust tokenizer is
    b._merges = [("o", "nly")]
    assert Hasher.hash(a) == Hasher.hash(b)
    assert backend_digest(a) == backend_digest(b)


def test_hashing_leaves_truncation_and_padding_as_they_were(fresh_tokenizer):
    tok = fresh_tokenizer()
    register_tokenizer_hash(tok)
    backend = tok._tokenizer
    backend.enable_truncation(max_length=7)
    backend.enable_padding(pad_id=0, length=9)
    digest = backend_digest(tok)
    assert backend.truncation["max_length"] == 7
    assert backend.padding["length"] == 9
    backend.no_truncation()
    backend.no_padding()
    assert backend_digest(tok) == digest  # the settings of the moment are not part of it
