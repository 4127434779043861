"""What the model knows vs what it says: linear probes on the frozen model's last-position hidden
states, per layer, next to the answer it gives (``decisions.auroc_by_language`` of the margin).

A logistic regression on the hidden state of the prompt's last token, trained on training items and
scored on held-out ones, measures whether "answer is present" is linearly decodable at that layer,
whatever the model's first answer token is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xlalign.evaluation.decisions import POOLED, bootstrap_auroc, positive

PROBE_COLUMNS = ("layer", "lang", "auroc", "ci_low", "ci_high", "accuracy", "n_train", "n_test")


def _lm():
    """The shared token helpers, wherever they live now (``xlalign.lm``, formerly ``scoring``)."""
    try:
        from xlalign import lm
    except ImportError:  # before the move: scoring.py had them
        from xlalign.evaluation import scoring as lm
    return lm


def _n_layers(model) -> int:
    config = model.config
    text = getattr(config, "text_config", None)  # multimodal configs (Gemma 3) nest the LM's
    n = getattr(config, "num_hidden_layers", None) or getattr(text, "num_hidden_layers", None)
    if n is None:
        raise ValueError(f"{type(model).__name__}'s config has no num_hidden_layers")
    return int(n)


@torch.inference_mode()
def hidden_states(
    model,
    tokenizer,
    rendered_prompts: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 8,
    progress: bool = True,
) -> dict[int, np.ndarray]:
    """The hidden state at each prompt's last token, per requested layer: {layer: (n, d) float32}.

    Layer ``L`` is ``output_hidden_states[L]``: 0 is the embedding output, ``L`` the output of block
    L, and the last one (``num_hidden_layers``) is what transformers returns there -- for Llama and
    Gemma already passed through the final norm. Prompts are encoded as in scoring mode
    (``lm.encode``) and left-padded with an attention mask and position ids that count real tokens
    only, so padding does not change a prompt's states; one forward per batch serves every layer,
    with logits for the last position only. Prompts are batched longest first, as the evaluations
    batch them, to limit padding (the cpu profile's 280 probe prompts, in their languages' order:
    15% of the tokens padding; sorted: 1%); the rows come back in the order of ``rendered_prompts``.
    ``progress`` shows a ``tqdm.auto`` bar over prompts.
    """
    from tqdm.auto import tqdm

    lm = _lm()
    layers = [int(x) for x in layers]
    n_layers = _n_layers(model)
    bad = [x for x in layers if not 0 <= x <= n_layers]
    if not layers or bad:
        raise ValueError(f"layers must be non-empty and within 0..{n_layers}, got {layers}")
    prompts = list(rendered_prompts)
    if not prompts:
        raise ValueError("no prompts to run")
    pad = lm.pad_id(tokenizer)
    device = lm.input_device(model)
    encoded = [lm.encode(tokenizer, p) for p in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {prompts[empty[0]][:60]!r} encodes to no tokens")
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # stable for ties
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    with (
        lm.eval_mode(model),
        tqdm(total=len(prompts), desc="hidden states", unit="prompt", disable=not progress) as bar,
    ):
        for batch in lm.batches(order, batch_size):
            ids, mask = lm.left_pad([encoded[i] for i in batch], pad, device)
            res = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=lm.positions(mask),
                output_hidden_states=True,
                use_cache=False,
                logits_to_keep=1,
            )
            for layer in layers:
                # left padding: every prompt's last real token sits in the last column
                out[layer].append(res.hidden_states[layer][:, -1].float().cpu().numpy())
            bar.update(len(batch))
    back = np.argsort(np.asarray(order))  # row j of the sorted stack is prompt order[j]
    return {layer: np.concatenate(chunks, axis=0)[back] for layer, chunks in out.items()}


@dataclass(frozen=True)
class ProbeFit:
    """A linear probe's held-out results: AUROC and accuracy, and the test items' scores."""

    auroc: float
    accuracy: float
    scores: np.ndarray  # decision_function on test_X: > 0 means "answer is present"
    pred: np.ndarray  # boolean "answer is present" per test item
    n_train: int
    n_test: int


def linear_probe(train_X, train_y, test_X, test_y, C: float = 0.1, seed: int = 0) -> ProbeFit:
    """StandardScaler + L2 LogisticRegression(C) fitted on the training items, scored on test.

    Labels may be 0/1, booleans or the probe's label strings (ANSWER_PRESENT is positive). The
    held-out AUROC is NaN when the test items share one label.
    """
    train_X, test_X = np.asarray(train_X, dtype=float), np.asarray(test_X, dtype=float)
    train_y, test_y = positive(train_y), positive(test_y)
    if train_X.ndim != 2 or test_X.ndim != 2 or train_X.shape[1] != test_X.shape[1]:
        raise ValueError(f"features must be (n, d) alike, got {train_X.shape} and {test_X.shape}")
    if len(train_X) != len(train_y) or len(test_X) != len(test_y):
        raise ValueError("features and labels differ in length")
    if train_y.all() or not train_y.any():
        raise ValueError("the training items hold one class only: nothing to separate")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, random_state=seed))
    clf.fit(train_X, train_y)
    scores = clf.decision_function(test_X)
    pred = clf.predict(test_X).astype(bool)
    two_classes = test_y.any() and not test_y.all()
    auroc = float(roc_auc_score(test_y, scores)) if two_classes else float("nan")
    return ProbeFit(
        auroc=auroc,
        accuracy=float((pred == test_y).mean()),
        scores=scores,
        pred=pred,
        n_train=len(train_y),
        n_test=len(test_y),
    )


def probe_prompts(rows: Sequence[dict], tokenizer, prompt_format: str) -> list[str]:
    """Rendered prompts of probe rows. Preference rows (``preference_rows``: they carry ``chosen``)
    are rendered already; raw ``probe_rows`` go through ``render_prompt`` as in evaluation."""
    from xlalign.probe.build import render_prompt

    return [
        r["prompt"] if "chosen" in r else render_prompt(r["prompt"], tokenizer, prompt_format)
        for r in rows
    ]


def probe_by_layer(
    model,
    tokenizer,
    train_rows: Sequence[dict],
    test_rows: Sequence[dict],
    layers: Sequence[int],
    prompt_format: str = "plain",
    C: float = 0.1,
    seed: int = 0,
    n_resamples: int = 1000,
    batch_size: int = 8,
) -> pd.DataFrame:
    """One linear probe per layer, trained on every training row, scored on the test rows.

    Rows are the project's probe rows (prompt, label, lang, sample_id, ...). Returns one row per
    layer and language of the test rows, plus lang "all" pooled first: auroc with a percentile
    bootstrap CI over test items (``decisions.bootstrap_auroc``), accuracy, n_train, n_test.
    """
    if not train_rows or not test_rows:
        raise ValueError("probe_by_layer needs training and test rows")
    train = hidden_states(
        model, tokenizer, probe_prompts(train_rows, tokenizer, prompt_format), layers, batch_size
    )
    test = hidden_states(
        model, tokenizer, probe_prompts(test_rows, tokenizer, prompt_format), layers, batch_size
    )
    train_y = positive([r["label"] for r in train_rows])
    test_y = positive([r["label"] for r in test_rows])
    langs = np.asarray([r["lang"] for r in test_rows])
    groups = [(POOLED, np.ones(len(langs), dtype=bool))]
    groups += [(str(lang), langs == lang) for lang in dict.fromkeys(langs)]
    out = []
    for layer in layers:
        fit = linear_probe(train[layer], train_y, test[layer], test_y, C=C, seed=seed)
        for lang, sel in groups:
            res = bootstrap_auroc(test_y[sel], fit.scores[sel], n_resamples, seed)
            out.append(
                {
                    "layer": int(layer),
                    "lang": lang,
                    "auroc": res.auroc,
                    "ci_low": res.ci_low,
                    "ci_high": res.ci_high,
                    "accuracy": float((fit.pred[sel] == test_y[sel]).mean()),
                    "n_train": fit.n_train,
                    "n_test": int(sel.sum()),
                }
            )
    return pd.DataFrame(out, columns=list(PROBE_COLUMNS))
