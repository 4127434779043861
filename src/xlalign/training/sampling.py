"""Aligned, uncoupled and clustered batch plans, the collator that keeps each row's group, and batch logs.

A plan depends only on (seed, epoch), so every process computes the same one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Sampler

META_KEYS = ("sample_id", "lang")
BATCHINGS = ("aligned", "uncoupled", "clustered")


class AlignmentError(RuntimeError):
    """A batch broke the promised composition, or a group lost members before training."""


# --------------------------------------------------------------------------- sampler


class GroupedBatchSampler(Sampler[int]):
    """Yields indices so that consecutive runs of ``batch_size`` indices form the planned batches.

    - ``aligned``: each batch is one group (one sample_id: same query, same label) in ``batch_size``
      languages; with fewer languages than the group has, English plus ``batch_size - 1`` others drawn per
      batch (paper C.3), or ``batch_size`` non-English ones when ``include_english`` is false (C.1).
    - ``uncoupled``: exactly the examples the aligned plan selects, shuffled across groups and languages,
      so both runs see the same examples the same number of times in the same number of steps.
    - ``clustered``: groups kept together in order, batches may straddle two groups (for data whose groups
      have unequal sizes, such as CALM's per-question pairs).

    The plan depends only on (seed, epoch), so every process computes the same one; the trainer's data
    loader then hands whole batches to processes round-robin. Batches per epoch are trimmed to a multiple
    of ``num_replicas * grad_accum`` so that every optimizer step sees whole groups on every process.

    ``max_batches``: the micro-batches a run trains on in all (``max_steps * grad_accum * replicas``),
    where it stops inside an epoch. The uncoupled plan then shuffles the examples of the batches the
    run reaches, and the rest apart, so both arms see identical examples also when stopped early.

    ``balance_labels`` (ours, not the papers'): each optimizer step holds as many examples of one label
    as of the other. Aligned steps alternate the groups' labels; the uncoupled plan shuffles the same
    selected examples within each label and deals them out so that every step is balanced. Groups left
    over once the rarer label runs out are dropped from the epoch, for both batchings alike, so the two
    arms still see identical examples. It needs ``labels`` (one per row, equal within a group).
    """

    def __init__(
        self,
        sample_ids: list[str],
        langs: list[str],
        batch_size: int,
        batching: str = "aligned",
        include_english: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        grad_accum: int = 1,
        anchor: str = "en",
        require_complete: bool = True,
        labels: list[str] | None = None,
        balance_labels: bool = False,
        max_batches: int | None = None,
    ):
        if batching not in BATCHINGS:
            raise ValueError(f"unknown batching {batching!r}")
        if balance_labels and batching == "clustered":
            raise ValueError(
                "balance_labels applies to aligned and uncoupled batching, not clustered"
            )
        if balance_labels and labels is None:
            raise AlignmentError("balance_labels needs each row's label (a 'label' column)")
        self.balance_labels = balance_labels
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches={max_batches} must be >= 1 (None: every epoch whole)")
        self.max_batches = max_batches
        self.batch_size, self.batching, self.seed = batch_size, batching, seed
        self.include_english, self.anchor = include_english, anchor
        self.unit = max(1, num_replicas) * max(1, grad_accum)
        self.epoch = 0
        groups: dict[str, dict[str, int]] = {}
        for i, (sid, lang) in enumerate(zip(sample_ids, langs, strict=True)):
            members = groups.setdefault(sid, {})
            if lang in members:
                raise AlignmentError(
                    f"group {sid!r} holds language {lang!r} twice (rows {members[lang]}, {i})"
                )
            members[lang] = i
        if not groups:
            raise AlignmentError("the training set is empty")
        self.group_label: dict[str, str] = {}
        if balance_labels:
            assert labels is not None
            if len(labels) != len(sample_ids):
                raise AlignmentError(f"{len(labels)} labels for {len(sample_ids)} rows")
            for i, (sid, lab) in enumerate(zip(sample_ids, labels, strict=True)):
                seen = self.group_label.setdefault(sid, lab)
                if seen != lab:
                    raise AlignmentError(
                        f"group {sid!r} mixes labels {seen!r} and {lab!r} (row {i}); one query has one answer"
                    )
            if len(set(self.group_label.values())) < 2:
                raise AlignmentError(
                    f"balance_labels needs two labels; the data has only {sorted(set(labels))}"
                )
        self.groups = dict(sorted(groups.items()))
        self.row_label = {
            i: lab for sid, lab in self.group_label.items() for i in self.groups[sid].values()
        }
        self.langs = sorted({lang for m in self.groups.values() for lang in m})
        if batching != "clustered" and require_complete:
            incomplete = {
                s: sorted(set(self.langs) - set(m))
                for s, m in self.groups.items()
                if len(m) < len(self.langs)
            }
            if incomplete:
                first = list(incomplete.items())[:5]
                raise AlignmentError(
                    f"{len(incomplete)} group(s) lost members before training, e.g. {first}; refusing to train "
                    "(check the over-length report: drop whole groups, never single languages)"
                )
        if batching != "clustered":
            pool = (
                [lang for lang in self.langs if lang != anchor]
                if not include_english
                else self.langs
            )
            if include_english and anchor not in self.langs:
                raise AlignmentError(
                    f"an English anchor was requested but the data has no {anchor!r} rows"
                )
            if batch_size > len(pool):
                raise AlignmentError(
                    f"batch_size={batch_size} is larger than the {len(pool)} languages available per group "
                    f"({', '.join(pool)})"
                )

    @classmethod
    def for_pairs(cls, pairs: list[dict], train, seed: int, num_replicas: int = 1):
        """The sampler the trainer builds for these preference rows under a profile's ``train`` section
        (batch size, batching, English anchor, accumulation, label balance and the ``max_steps`` stop),
        for planners that count steps or rows without a trainer."""
        steps = train.max_steps if train.max_steps and train.max_steps > 0 else None
        return cls(
            [r["sample_id"] for r in pairs],
            [r["lang"] for r in pairs],
            train.batch_size,
            train.batching,
            include_english=train.include_english,
            seed=seed,
            num_replicas=num_replicas,
            grad_accum=train.grad_accum,
            require_complete=train.batching != "clustered",
            labels=[r.get("label") for r in pairs] if train.balance_labels else None,
            balance_labels=train.balance_labels,
            max_batches=steps * train.grad_accum * max(1, num_replicas) if steps else None,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _choose_langs(self, members: dict[str, int], rng: np.random.Generator) -> list[str]:
        langs = sorted(members)
        b = self.batch_size
        if not self.include_english:
            pool = [lang for lang in langs if lang != self.anchor]
            return list(rng.choice(pool, size=b, replace=False))
        others = [lang for lang in langs if lang != self.anchor]
        return [self.anchor] + list(rng.choice(others, size=b - 1, replace=False))

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's batches as lists of dataset indices."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        sids = list(self.groups)
        order = [sids[i] for i in rng.permutation(len(sids))]
        if self.batching == "clustered":
            flat = []
            for sid in order:
                members = list(self.groups[sid].values())
                flat += [members[i] for i in rng.permutation(len(members))]
            batches = [flat[i : i + self.batch_size] for i in range(0, len(flat), self.batch_size)]
            batches = [b for b in batches if len(b) == self.batch_size]
        else:
            if self.balance_labels:
                order = self._alternate_labels(order)
            batches = [
                [self.groups[sid][lang] for lang in self._choose_langs(self.groups[sid], rng)]
                for sid in order
            ]
            batches = batches[: len(batches) - len(batches) % self.unit]
            if self.batching == "uncoupled":
                # Shuffled within the part of the epoch the run trains on, and within the rest, so
                # that a run stopped by max_steps sees exactly the aligned run's examples.
                used = self._used_in_epoch(self.epoch if epoch is None else epoch, len(batches))
                head, tail = batches[:used], batches[used:]
                batches = self._uncouple(head, rng) + (self._uncouple(tail, rng) if tail else [])
        keep = len(batches) - len(batches) % self.unit
        return batches[:keep]

    def _used_in_epoch(self, epoch: int, n_batches: int) -> int:
        """Micro-batches of this epoch's plan that a run of ``max_batches`` consumes."""
        if self.max_batches is None:
            return n_batches
        left = self.max_batches - epoch * n_batches
        return min(n_batches, left) if left > 0 else n_batches

    def _uncouple(self, batches: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        """The examples of ``batches`` shuffled across groups and languages (label-balanced per
        optimizer step with ``balance_labels``)."""
        if self.balance_labels:
            return self._deal_balanced(batches, rng)
        flat = [i for b in batches for i in b]
        flat = [flat[i] for i in rng.permutation(len(flat))]
        return [flat[i : i + self.batch_size] for i in range(0, len(flat), self.batch_size)]

    @staticmethod
    def _interleave(items: list, label_of, rng: np.random.Generator | None = None) -> list:
        """``items`` re-dealt one of each label in turn (labels in sorted order), each label keeping
        its order (or shuffled by ``rng``), up to where the rarer label runs out."""
        by_label: dict[str, list] = {}
        for x in items:
            by_label.setdefault(label_of(x), []).append(x)
        queues = [by_label[lab] for lab in sorted(by_label)]
        if rng is not None:
            queues = [[q[j] for j in rng.permutation(len(q))] for q in queues]
        return [q[i] for i in range(min(len(q) for q in queues)) for q in queues]

    def _alternate_labels(self, order: list[str]) -> list[str]:
        """The groups in ``order`` with their labels alternating (``_interleave``)."""
        return self._interleave(order, self.group_label.__getitem__)

    def _deal_balanced(self, batches: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        """The examples of ``batches`` (an aligned, label-alternating plan) shuffled within each label
        and dealt out in turn, then shuffled within each optimizer step and cut into micro-batches: every
        step holds the same number of each label, and the batches mix groups and languages."""
        flat = [i for b in batches for i in b]
        dealt = self._interleave(flat, self.row_label.__getitem__, rng)
        step = self.unit * self.batch_size
        out: list[int] = []
        for start in range(0, len(dealt), step):
            chunk = dealt[start : start + step]
            out += [chunk[j] for j in rng.permutation(len(chunk))]
        return [out[i : i + self.batch_size] for i in range(0, len(out), self.batch_size)]

    def __iter__(self):
        for batch in self.plan():
            yield from batch

    def __len__(self) -> int:
        return len(self.plan(0)) * self.batch_size


# --------------------------------------------------------------------------- collator and batch logs


class MetaCollator:
    """Strips string columns before TRL's collator and keeps (sample_id, lang) beside the batch."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        meta = [{k: e.get(k) for k in META_KEYS} for e in examples]

        def keep(v):
            return not isinstance(v, str) and not (
                isinstance(v, list) and v and isinstance(v[0], str)
            )

        batch = self.inner([{k: v for k, v in e.items() if keep(v)} for e in examples])
        batch["xl_meta"] = meta
        return batch


def read_batch_logs(out: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(out).glob("batches.rank*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def verify_batch_log(rows: list[dict], batching: str, batch_size: int) -> dict:
    """Re-check a run's batch log from disk: every aligned micro-batch one group in distinct languages,
    groups disjoint across processes within a step. Returns summary counts; raises on a violation."""
    by_step: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        if len(r["langs"]) != batch_size:
            raise AlignmentError(
                f"batch of {len(r['langs'])} rows at step {r['step']} rank {r['rank']}"
            )
        if batching == "aligned" and (
            len(set(r["sample_ids"])) != 1 or len(set(r["langs"])) != batch_size
        ):
            raise AlignmentError(f"mixed aligned batch at step {r['step']} rank {r['rank']}: {r}")
        by_step.setdefault(r["step"], []).append(r)
    for step, entries in by_step.items():
        if batching == "aligned":
            seen: dict[str, int] = {}
            for e in entries:
                sid = e["sample_ids"][0]
                if sid in seen and seen[sid] != e["rank"]:
                    raise AlignmentError(
                        f"group {sid} split across ranks {seen[sid]} and {e['rank']} at step {step}"
                    )
                seen[sid] = e["rank"]
    return {
        "micro_batches": len(rows),
        "ranks": sorted({r["rank"] for r in rows}),
        "steps": len(by_step),
    }
