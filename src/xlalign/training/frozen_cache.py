"""Reuse what the frozen lower layers compute: each token sequence's hidden states entering the first
adapted layer, computed once per model and kept in memory (and, optionally, on disk per run directory).

LoRA on the top ``lora.top_layers`` layers leaves the embedding and every layer below them as they
are, so the hidden state a prompt has at the input of the lowest adapted layer (the *boundary*) is the
same in every training step, every epoch, every run on the same base model, DPO's reference pass and
every evaluation. ``FrozenStates`` computes it once per unique token sequence and the trainers and
``evaluation.scoring`` feed it to the upper layers through the model's own forward (the lower layers are
bypassed for the call, ``upper_only``). Exactness conditions, checked at every use (``safe_boundary``):
nothing at or below the boundary is trainable or adapted, and no dropout is active there. Positions
and masks are the model's own (left padding, position ids counting real tokens), so Gemma-3's
rotary positions and its sliding-window layers see what the full forward gives them.

An entry is keyed by the model's fingerprint (class, config, source, revision, dtype, boundary and a
sha256 of the embedding and lower-layer weights) and the token ids; a stored entry whose recorded
fingerprint, boundary, ids or shape differ from the request is logged and rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from xlalign.lm import left_pad, positions

log = logging.getLogger(__name__)

FORMAT = "xlalign-frozen-states-1"
SUPPORTED = ("LlamaModel", "Gemma3TextModel")  # the decoders whose forward this was tested against
# Config keys that do not change what a layer computes (trainers switch use_cache off, for one).
VOLATILE_CONFIG = ("use_cache", "transformers_version", "output_attentions", "output_hidden_states")
DEFAULT_MAX_BYTES = 2 * 2**30  # in-memory entries per process (our choice; oldest dropped beyond)
# Entries are copied into slabs of this size (our choice): above glibc's largest dynamic mmap threshold
# (32 MiB), so each slab is its own mapping and the long-lived states stay out of the C heap, where,
# kept one ~1 MB tensor at a time between a step's short-lived activations, they fragmented it (a
# 60-step ORPO run held 10.3 GB of RSS with 1.7 GB in use, 7.5 GB free inside the heap).
SLAB_BYTES = 64 * 2**20


class FrozenCacheError(ValueError):
    """A stored entry that cannot be used for the request (it is rebuilt)."""


# --------------------------------------------------------------------------- the model's parts


def causal_lm(model):
    """The transformers CausalLM inside PEFT wrappers."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def decoder(model):
    """The decoder stack (``.layers``, ``.embed_tokens``) of a CausalLM, PEFT-wrapped or not."""
    return causal_lm(model).model


def _layer_index(name: str) -> int | None:
    m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def safe_boundary(model, grad: bool | None = None) -> int:
    """How many leading decoder layers compute exactly what the base model's do, here and now.

    0 when the decoder is not one we support, or when the embedding is trainable or adapted; else the
    index of the lowest layer that holds a PEFT tuner module, an active dropout or -- where gradients
    are computed (``grad``, default: ``torch.is_grad_enabled()``) -- a parameter that requires them
    (a reused state carries no gradient). The number of layers when there is none. The weights below
    the boundary are taken not to change while a store is attached: the trainers only attach when
    they are frozen, and the optimizer updates only what requires gradients.
    """
    dec = decoder(model)
    if type(dec).__name__ not in SUPPORTED:
        return 0
    grad = torch.is_grad_enabled() if grad is None else grad
    n = len(dec.layers)
    low = n
    for name, p in dec.named_parameters():
        if grad and p.requires_grad:
            i = _layer_index(name)
            if i is None and not name.startswith(("norm.", "rotary_emb.")):
                return 0  # the embedding (or something below layer 0) is trained
            if i is not None:
                low = min(low, i)
    for name, mod in dec.named_modules():
        adapted = hasattr(mod, "lora_A") or type(mod).__module__.startswith("peft.")
        dropout = isinstance(mod, nn.Dropout) and mod.p > 0 and mod.training
        if adapted or dropout:
            i = _layer_index(name + ".")
            if i is None and name.startswith("embed_tokens"):
                return 0
            if i is not None:
                low = min(low, i)
    cfg = dec.config
    if dec.training and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
        return 0  # attention dropout is drawn inside every layer
    return low


def fingerprint(model, boundary: int) -> str:
    """sha256 of what the lower states depend on: decoder class, config, source, revision, dtype,
    boundary, and the bytes of the embedding and of layers ``< boundary``. Memoized on the model."""
    lm = causal_lm(model)
    memo = getattr(lm, "_xl_frozen_fp", {})
    if boundary in memo:
        return memo[boundary]
    dec = lm.model
    h = hashlib.sha256()
    head = {
        "format": FORMAT,
        "decoder": type(dec).__name__,
        "config": {
            k: v
            for k, v in json.loads(dec.config.to_json_string(use_diff=False)).items()
            if k not in VOLATILE_CONFIG
        },
        "source": str(getattr(lm.config, "_name_or_path", "")),
        "revision": getattr(lm.config, "_commit_hash", None),
        "dtype": str(next(dec.parameters()).dtype),
        "boundary": boundary,
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    parts = [("embed_tokens", dec.embed_tokens)] + [
        (f"layers.{i}", dec.layers[i]) for i in range(boundary)
    ]
    for prefix, module in parts:
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    memo[boundary] = h.hexdigest()
    lm._xl_frozen_fp = memo
    return memo[boundary]


class _Skip(nn.Module):
    """Stands in for a bypassed lower layer: returns its input (the cached state) unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def upper_cache(model, boundary: int):
    """A ``DynamicCache`` for the upper layers only: the slots of layers below ``boundary`` hold nothing.

    transformers sizes each mask type from the first cache layer of that type that is not a
    ``DummyLayer``, so a bypassed layer must never be that layer; where no running layer has a type,
    that type's mask is never used and the slot answers with an empty past.
    """
    from transformers import DynamicCache

    bypassed = _bypassed_layer()
    cache = DynamicCache(config=causal_lm(model).config)
    for i in range(boundary):
        cache.layers[i] = bypassed()
    return cache


@functools.cache
def _bypassed_layer():
    """The cache-layer class of a bypassed slot, made once (a class made per call is a reference cycle
    that only the garbage collector frees)."""
    from transformers.cache_utils import DummyLayer

    class Bypassed(DummyLayer):
        is_sliding = False

        def get_mask_sizes(self, query_length, *args, **kwargs):
            return query_length, 0

        def get_seq_length(self, *args, **kwargs):
            return 0

    return Bypassed


@contextlib.contextmanager
def upper_only(model, boundary: int):
    """For the duration, the decoder's layers below ``boundary`` return their input: the model's
    forward, called with ``inputs_embeds`` = the states entering layer ``boundary``, runs only the
    layers from there up (with its own masks, rotary positions, norm, head and soft-capping)."""
    dec = decoder(model)
    old = dec.layers
    dec.layers = nn.ModuleList([_Skip() for _ in range(boundary)] + list(old[boundary:]))
    try:
        yield
    finally:
        dec.layers = old


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _capture_at(model, boundary: int, sink: list):
    """Stop the forward at layer ``boundary``, keeping the hidden states that enter it."""

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        sink.append(hs.detach())
        raise _Stop

    handle = decoder(model).layers[boundary].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def lower_states(model, boundary: int, rows: Sequence[Sequence[int]], pad: int, device):
    """Run layers ``< boundary`` on left-padded ``rows`` (the KV cache kept). Returns (states (B, W, d),
    mask, cache); only layers below the boundary hold cache entries."""
    ids, mask = left_pad(rows, pad, device)
    sink: list = []
    from transformers import DynamicCache

    cache = DynamicCache(config=causal_lm(model).config)
    with torch.no_grad(), _capture_at(model, boundary, sink), contextlib.suppress(_Stop):
        causal_lm(model)(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions(mask),
            past_key_values=cache,
            use_cache=True,
        )
    return sink[0], mask, cache


def lower_continuations(model, boundary, cache, ctx_mask, owner, conts, pad, device):
    """Continue rows of ``cache`` (row ``owner[j]`` for continuation j) with ``conts`` through the lower
    layers; returns each continuation's states entering layer ``boundary`` ((len, d) each)."""
    width = max(len(c) for c in conts)
    ids = torch.full((len(conts), width), pad, dtype=torch.long)
    cmask = torch.zeros((len(conts), width), dtype=torch.long)
    for j, c in enumerate(conts):
        ids[j, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
        cmask[j, : len(c)] = 1
    ids, cmask = ids.to(device), cmask.to(device)
    index = torch.as_tensor(owner, dtype=torch.long, device=device)
    cache.batch_select_indices(index)
    cm = ctx_mask[index]
    start = cm.sum(-1, keepdim=True)
    sink: list = []
    with torch.no_grad(), _capture_at(model, boundary, sink), contextlib.suppress(_Stop):
        causal_lm(model)(
            input_ids=ids,
            attention_mask=torch.cat([cm, cmask], dim=1),
            position_ids=start + torch.arange(width, device=device),
            past_key_values=cache,
            use_cache=True,
        )
    return [sink[0][j, : len(c)] for j, c in enumerate(conts)]


# --------------------------------------------------------------------------- the store


def _key_hash(fp: str, boundary: int, prefix: Sequence[int], cont: Sequence[int] | None) -> str:
    h = hashlib.sha256(f"{fp}:{boundary}:".encode())
    h.update(torch.as_tensor(list(prefix), dtype=torch.int64).numpy().tobytes())
    if cont is not None:
        h.update(b"|")
        h.update(torch.as_tensor(list(cont), dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


class FrozenStates:
    """States entering layer ``boundary`` per token sequence, for models with one fingerprint.

    ``prefix`` entries hold a prompt's states at every position; ``(prefix, cont)`` entries hold the
    states of the tokens of ``cont`` continuing that prompt. ``directory`` (optional) keeps them as
    safetensors files across processes; in memory at most ``max_bytes`` are kept, in ``SLAB_BYTES``
    slabs (the oldest slab and its entries dropped beyond). ``hits``, ``misses`` and ``rebuilt`` count
    lookups.
    """

    def __init__(
        self,
        boundary: int,
        fp: str,
        directory: str | os.PathLike | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        meta: dict | None = None,
    ):
        if boundary < 1:
            raise ValueError(f"boundary={boundary}: at least one frozen layer is needed")
        self.boundary, self.fp, self.meta = boundary, fp, dict(meta or {})
        self.directory = Path(directory) / fp[:16] if directory is not None else None
        self.max_bytes = max_bytes
        self._mem: dict[tuple, torch.Tensor] = {}
        # Oldest first: [buffer (1-D), elements used, keys of the entries in it].
        self._slabs: deque[list] = deque()
        self._bytes = 0  # the slabs' bytes
        self.hits = self.misses = self.rebuilt = 0

    # ---- one entry

    def _path(self, prefix, cont) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{_key_hash(self.fp, self.boundary, prefix, cont)}.safetensors"

    def _remember(self, key, states: torch.Tensor) -> torch.Tensor:
        """Keep a copy of ``states`` under ``key`` (in the newest slab, or a new one); returns the copy."""
        if key in self._mem:
            return self._mem[key]
        n = states.numel()
        slab = self._slabs[-1] if self._slabs else None
        if (
            slab is None
            or slab[0].dtype != states.dtype
            or slab[0].device != states.device
            or slab[1] + n > slab[0].numel()
        ):
            size = max(n, SLAB_BYTES // states.element_size())
            slab = [torch.empty(size, dtype=states.dtype, device=states.device), 0, []]
            self._slabs.append(slab)
            self._bytes += size * states.element_size()
        kept = slab[0][slab[1] : slab[1] + n].view(states.shape)
        kept.copy_(states)
        slab[1] += n
        slab[2].append(key)
        self._mem[key] = kept
        while self._bytes > self.max_bytes and len(self._slabs) > 1:
            buf, _, keys = self._slabs.popleft()
            self._bytes -= buf.numel() * buf.element_size()
            for k in keys:
                self._mem.pop(k, None)
        return kept

    def check_entry(self, path: Path, prefix, cont, hidden: int, dtype) -> torch.Tensor:
        """The states in ``path`` if it holds this request's entry; FrozenCacheError says why not."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                ids = f.get_tensor("ids")
                states = f.get_tensor("states")
        except Exception as exc:  # a torn or damaged file
            raise FrozenCacheError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
        want_ids = list(prefix) + list(cont or [])
        n_prefix = len(prefix) if cont is not None else 0
        checks = [
            ("format", meta.get("format"), FORMAT),
            ("fingerprint", meta.get("fingerprint"), self.fp),
            ("boundary (frozen layer count)", meta.get("boundary"), str(self.boundary)),
            ("n_prefix", meta.get("n_prefix"), str(n_prefix)),
            ("ids", ids.tolist(), want_ids),
            ("states shape", tuple(states.shape), (len(want_ids) - n_prefix, hidden)),
            ("states dtype", str(states.dtype), str(dtype)),
        ]
        for field, got, want in checks:
            if got != want:
                shown = (lambda v: v) if field != "ids" else (lambda v: f"{len(v)} ids")
                raise FrozenCacheError(
                    f"{path}: {field} is {shown(got)!s:.80}, the request needs {shown(want)!s:.80}"
                )
        return states

    def _load(self, prefix, cont, hidden, dtype) -> torch.Tensor | None:
        path = self._path(prefix, cont)
        if path is None or not path.exists():
            return None
        try:
            return self.check_entry(path, prefix, cont, hidden, dtype)
        except FrozenCacheError as exc:
            log.warning("frozen-state entry not used, rebuilt: %s", exc)
            self.rebuilt += 1
            return None

    def _store(self, prefix, cont, states: torch.Tensor) -> None:
        path = self._path(prefix, cont)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        ids = torch.as_tensor(list(prefix) + list(cont or []), dtype=torch.int64)
        meta = {
            "format": FORMAT,
            "fingerprint": self.fp,
            "boundary": str(self.boundary),
            "n_prefix": str(len(prefix) if cont is not None else 0),
            **{k: str(v) for k, v in self.meta.items()},
        }
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        # A copy: an entry is a view into its slab, whose other bytes are not this entry's.
        save_file({"ids": ids, "states": states.cpu().clone()}, str(tmp), metadata=meta)
        os.replace(tmp, path)

    def _get(self, prefix, cont, hidden, dtype, device):
        key = (tuple(prefix), None if cont is None else tuple(cont))
        if key in self._mem:
            return self._mem[key].to(device)
        states = self._load(prefix, cont, hidden, dtype)
        if states is not None:
            return self._remember(key, states.to(device))
        return None

    # ---- a batch

    def states(
        self,
        model,
        prefixes: Sequence[Sequence[int]],
        conts: Sequence[Sequence[int]],
        owner: Sequence[int],
        pad: int,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """States of each prefix (T_b, d) and of each continuation j of prefix ``owner[j]`` (len, d).

        Missing entries are computed in one lower pass over the prefixes that need it (a prefix is
        recomputed when any of its continuations is missing) and stored.
        """
        dec = decoder(model)
        hidden = dec.config.hidden_size
        dtype = dec.embed_tokens.weight.dtype
        device = dec.embed_tokens.weight.device
        p_states = [self._get(p, None, hidden, dtype, device) for p in prefixes]
        c_states = [
            self._get(prefixes[o], c, hidden, dtype, device) if len(c) else None
            for o, c in zip(owner, conts, strict=True)
        ]
        need = sorted(
            {b for b, s in enumerate(p_states) if s is None}
            | {o for o, c, s in zip(owner, conts, c_states, strict=True) if len(c) and s is None}
        )
        found = sum(s is not None for s in p_states) + sum(
            s is not None for c, s in zip(conts, c_states, strict=True) if len(c)
        )
        self.hits += found
        if need:
            self.misses += len(need)
            states, mask, cache = lower_states(
                model, self.boundary, [prefixes[b] for b in need], pad, device
            )
            width = mask.shape[1]
            for row, b in enumerate(need):
                s = states[row, width - len(prefixes[b]) :]
                if p_states[b] is None:
                    p_states[b] = self._remember((tuple(prefixes[b]), None), s)
                    self._store(prefixes[b], None, p_states[b])
            todo = [
                j
                for j, (o, c) in enumerate(zip(owner, conts, strict=True))
                if len(c) and c_states[j] is None
            ]
            if todo:
                row_of = {b: row for row, b in enumerate(need)}
                outs = lower_continuations(
                    model,
                    self.boundary,
                    cache,
                    mask,
                    [row_of[owner[j]] for j in todo],
                    [conts[j] for j in todo],
                    pad,
                    device,
                )
                for j, s in zip(todo, outs, strict=True):
                    c_states[j] = self._remember((tuple(prefixes[owner[j]]), tuple(conts[j])), s)
                    self._store(prefixes[owner[j]], conts[j], c_states[j])
        empty = torch.zeros((0, hidden), dtype=dtype, device=device)
        return p_states, [s if s is not None else empty for s in c_states]


# --------------------------------------------------------------------------- attach and use

_REGISTRY: dict[tuple, FrozenStates] = {}


def attach(
    model, boundary: int | None = None, directory=None, max_bytes=DEFAULT_MAX_BYTES, grad=None
):
    """Reuse frozen-layer states for ``model``; returns the ``FrozenStates`` or None where it cannot apply.

    ``boundary``: the number of frozen leading layers whose output to keep (default: as many as are
    frozen now). ``grad``: whether the model will be used with gradients (default: whether they are
    enabled now; see ``safe_boundary``). Models with the same fingerprint share one store per process
    (and per ``directory``), so a run's trainings and evaluations reuse each other's entries.
    """
    safe = safe_boundary(model, grad)
    b = safe if boundary is None else boundary
    n_layers = len(decoder(model).layers) if safe else 0
    if b < 1 or b > safe or b >= max(n_layers, 1):
        log.info(
            "frozen-state reuse does not apply (boundary %s, %s frozen layers): computing in full",
            b,
            safe,
        )
        causal_lm(model)._xl_frozen = None
        return None
    fp = fingerprint(model, b)
    key = (fp, b, str(directory) if directory is not None else None)
    store = _REGISTRY.get(key)
    if store is None:
        lm = causal_lm(model)
        meta = {
            "source": getattr(lm.config, "_name_or_path", ""),
            "revision": getattr(lm.config, "_commit_hash", None),
            "n_layers": n_layers,
        }
        store = _REGISTRY[key] = FrozenStates(b, fp, directory, max_bytes, meta)
    causal_lm(model)._xl_frozen = store
    return store


def attached(model) -> FrozenStates | None:
    """The store attached to ``model``, if it still applies (its boundary is still frozen)."""
    store = getattr(causal_lm(model), "_xl_frozen", None)
    if store is None:
        return None
    if safe_boundary(model) < store.boundary:
        return None
    return store


def detach(model) -> None:
    causal_lm(model)._xl_frozen = None


def forget_all() -> None:
    """Drop every store this process holds in memory, as a new process starts; files stay on disk."""
    _REGISTRY.clear()


def pad_states(states: Sequence[torch.Tensor], left: bool = True) -> torch.Tensor:
    """(B, W, d) of per-row states, zero-padded (left or right) to the longest row."""
    width = max(s.shape[0] for s in states)
    out = states[0].new_zeros((len(states), width, states[0].shape[-1]))
    for i, s in enumerate(states):
        if s.shape[0]:
            if left:
                out[i, width - s.shape[0] :] = s
            else:
                out[i, : s.shape[0]] = s
    return out


def prefill_reusing(model, rows, pad: int, device, feeds=(), owner=()):
    """``lm.prefill`` of ``rows`` that reuses the attached store's states when there is one.

    ``feeds[j]`` are the tokens a later continuation pass feeds after row ``owner[j]`` (in the order
    of that pass's rows). Returns ``(output, mask, forward)``: ``forward(input_ids, **kwargs)`` runs
    that continuation (``input_ids`` right-padded to the longest feed), through the upper layers
    from the stored states when reusing, else through the whole model.
    """
    store = attached(model)
    if store is None:
        from xlalign.lm import prefill

        out, mask = prefill(model, rows, pad, device)
        return out, mask, lambda input_ids, **kw: model(input_ids=input_ids, **kw)
    p_states, c_states = store.states(model, rows, list(feeds), list(owner), pad)
    _, mask = left_pad(rows, pad, device)
    with upper_only(model, store.boundary):
        out = model(
            inputs_embeds=pad_states(p_states),
            attention_mask=mask,
            position_ids=positions(mask),
            past_key_values=upper_cache(model, store.boundary),
            use_cache=True,
            logits_to_keep=1,
        )

    def forward(input_ids, **kw):
        embeds = pad_states(c_states, left=False)
        if embeds.shape[1] != input_ids.shape[1]:
            raise ValueError(
                f"continuation of {input_ids.shape[1]} columns, the feeds need {embeds.shape[1]}"
            )
        with upper_only(model, store.boundary):
            return model(inputs_embeds=embeds, **kw)

    return out, mask, forward


def profile_boundary(model, profile) -> int:
    """The frozen-layer count the profile's LoRA leaves: layers below ``n - lora.top_layers``
    (0, i.e. no reuse, when LoRA adapts every layer)."""
    top = getattr(profile.lora, "top_layers", 0) or 0
    n = len(decoder(model).layers)
    return max(0, n - top) if top else 0


def attach_for_profile(model, profile, run_dir=None, grad: bool = False):
    """``attach`` with the profile's boundary (``profile_boundary``), where ``train.reuse_frozen`` is on;
    the states are kept in ``<run_dir>/cache/frozen`` when ``run_dir`` is given. Base and adapted models
    of one run then share entries. ``grad``: False for evaluation (the default), True for training.
    Returns the store or None."""
    if not getattr(profile.train, "reuse_frozen", False):
        return None
    boundary = profile_boundary(model, profile)
    if boundary < 1:
        return None
    directory = Path(run_dir) / "cache" / "frozen" if run_dir is not None else None
    return attach(model, boundary=boundary, directory=directory, grad=grad)
