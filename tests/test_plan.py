"""The dry-run plan: what each notebook would run, checked against the papers' tables, and that a dry
run loads no model and writes nothing."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from xlalign import paper
from xlalign.cli import main
from xlalign.config import derive, load_profile
from xlalign.plan import format_plan, notebook_stems, plan_chain, plan_notebook, train_steps

LANG_CODES = {
    "english": "en",
    "thai": "th",
    "vietnamese": "vi",
    "hungarian": "hu",
    "romanian": "ro",
}


@pytest.fixture(scope="module")
def paper_plan():
    return {nb.notebook[:2]: nb for nb in plan_chain(load_profile("paper"))}


def _trains(nb, fresh_only: bool = False):
    return [r for r in nb.runs if r.kind == "train" and not (fresh_only and r.reuses)]


def test_every_notebook_has_a_plan(paper_plan):
    assert [nb.notebook for nb in paper_plan.values()] == notebook_stems()
    assert all("no planner" not in " ".join(nb.notes) for nb in paper_plan.values()), (
        "a notebook was added without a planner in xlalign.plan"
    )


def test_baselines_are_table_5s_models(paper_plan):
    published = {m.lower() for m in paper.load_table("ba_t05")["model"]}
    evaluated = {r.model for r in paper_plan["02"].runs if r.kind == "eval"}
    assert evaluated == published
    assert any(r.kind == "probe" for r in paper_plan["02"].runs)


def test_notebook_03_trains_tables_6_and_8(paper_plan):
    blocks = set(paper.load_table("ba_t06")["block"]) | set(paper.load_table("ba_t08")["block"])
    trained = {
        (r.method, r.batching, r.batch_size, r.launch) for r in _trains(paper_plan["03"], True)
    }
    name = {"uncoupled": "default", "aligned": "ours"}
    assert {f"{m}_{name[b]}" for m, b, _, _ in trained} == blocks
    assert {bs for _, _, bs, _ in trained} == {7}  # A.3: batch size 7
    # Four processes through the profile's accelerate config (4 x 7 = 28 rows per step).
    assert {launch for *_, launch in trained} == {
        "accelerate launch --config_file configs/accelerate/multi_gpu_4.yaml (4 processes)"
    }
    assert paper_plan["03"].launches == [next(iter(trained))[3]]


def test_notebook_05_runs_tables_9_to_13(paper_plan):
    trains = _trains(paper_plan["05"])
    for table, method in (("ba_t12", "dpo"), ("ba_t13", "orpo")):
        cols = set(paper.load_table(table)["column"])
        sizes = {int(c.removeprefix("bs_")) for c in cols if c.startswith("bs_")}
        aligned = {
            r.batch_size
            for r in trains
            if r.method == method and r.batching == "aligned" and "no-english" not in r.label
        }
        assert sizes <= aligned, (table, sizes, aligned)
        # The uncoupled default at the largest size is notebook 03's run, trained once.
        default = [r for r in trains if r.method == method and r.batching == "uncoupled"]
        assert [r.reuses for r in default if "mt" not in r.label] == [f"{method}-uncoupled"]
    no_en = {r.method: r.batch_size for r in trains if "no-english" in r.label}
    assert no_en == {"dpo": 6, "orpo": 6}  # Tables 9 (DPO) and 10 (ORPO): the six others
    mt = [r for r in trains if "-mt-" in r.label]
    t11 = paper.load_table("ba_t11")
    assert {r.method for r in mt} == {b.split("_")[0] for b in t11["block"] if b != "baseline"}
    assert {r.batch_size for r in mt} == {7}  # Table 11: batch size 7
    mt_langs = {lang for r in paper_plan["05"].runs if r.kind == "eval" for lang in r.langs}
    want = {LANG_CODES[c] for c in t11["column"] if c in LANG_CODES}
    assert want <= mt_langs


def test_notebook_06_unseen_languages_and_benchmarks(paper_plan):
    nb = paper_plan["06"]
    t07 = {LANG_CODES[c] for c in paper.load_table("ba_t07")["column"] if c in LANG_CODES}
    unseen = [r for r in nb.runs if r.kind == "eval" and "unseen" in r.label]
    assert unseen and set(unseen[0].langs) == t07
    named = " ".join(nb.benchmarks)
    for bench in ("mmmlu", "mgsm", "pawsx", "lambada"):  # Tables 2-4
        assert bench in named
    assert "stand-in" not in named
    blocks = {r.label.removeprefix("lm-eval/") for r in nb.runs if r.kind == "benchmark"}
    assert blocks == {"baseline", "dpo_default", "dpo_ours", "orpo_default", "orpo_ours"}
    # Its adapters are notebook 03's: nothing is trained again.
    assert _trains(nb) and not _trains(nb, fresh_only=True)


def test_paper_steps_count_three_epochs_over_four_processes():
    p = load_profile("paper", overrides=["data.source=corpus"])
    nb03 = plan_notebook(p, "03")
    pairs = plan_chain(p, only=["01"])[0].datasets[0]
    assert "1344 preference rows" in pairs
    # 1344 pairs = 192 batches of 7; 4 processes take 4 batches per step: 48 steps an epoch, 3 epochs.
    assert {r.steps for r in _trains(nb03)} == {144}


def test_steps_follow_the_batch_sampler(tiny_profile):
    from xlalign.probe.dataset import build_probe_data

    data = build_probe_data(tiny_profile)
    assert len({r["sample_id"] for r in data.train_pref}) == 24  # 24 groups x 3 languages
    p = derive(tiny_profile, train={"max_steps": -1, "epochs": 2, "batch_size": 3})
    assert train_steps(p, data.train_pref) == 2 * 24  # one group per aligned batch
    p = derive(p, train={"grad_accum": 2})
    assert train_steps(p, data.train_pref) == 24
    p = derive(p, train={"max_steps": 5})
    assert train_steps(p, data.train_pref) == 5
    # Label-balanced steps drop the groups left over once the rarer label runs out, as the trainer does.
    labels = {r["sample_id"]: r["label"] for r in data.train_pref}
    first = sorted(set(labels.values()))[0]
    dropped = sorted(s for s, lab in labels.items() if lab == first)[:4]
    pairs = [
        r for r in data.train_pref if r["sample_id"] not in dropped
    ]  # 4 groups fewer of one label
    rarer = min(Counter(lab for s, lab in labels.items() if s not in dropped).values())
    p = derive(p, train={"max_steps": -1, "epochs": 1})
    assert train_steps(p, pairs) == (len(labels) - 4) // 2
    p = derive(p, train={"balance_labels": True})
    assert train_steps(p, pairs) == 2 * rarer // 2 < (len(labels) - 4) // 2


def test_reuse_across_the_chain_is_counted_once():
    plans = {nb.notebook[:2]: nb for nb in plan_chain(load_profile("smoke"))}
    assert not _trains(plans["03"])[0].reuses  # notebook 03 trains its arms
    nb05 = plans["05"]
    reused = {r.label: r.reuses for r in _trains(nb05) if r.reuses}
    assert set(reused.values()) <= {r.label for r in _trains(plans["03"])}
    assert reused, "the ablations' batch-size-max runs are notebook 03's"
    base = [r for r in plans["03"].runs if r.label.startswith("baseline")]
    assert base[0].reuses == base[0].label  # scored in notebook 02 already
    alone = plan_notebook(load_profile("smoke"), "05", alone=True)
    assert not any(r.reuses for r in _trains(alone) if "bs1" in r.label)


def test_the_dry_run_loads_no_model_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import xlalign.models as models

    def refuse(*a, **k):
        raise AssertionError("a dry run loaded a model or tokenizer")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)
    monkeypatch.setenv("XLALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runs = tmp_path / "runs"
    for profile in ("smoke", "paper"):
        rc = main(["reproduce", "--profile", profile, "--dry-run", f"run_root={runs}"])
        out = capsys.readouterr().out
        assert rc == 0
        for stem in notebook_stems():
            assert stem in out
    rc = main(["reproduce", "--profile", "smoke", "--dry-run", "--json", f"run_root={runs}"])
    plan = json.loads(capsys.readouterr().out)
    assert rc == 0 and [nb["notebook"] for nb in plan["notebooks"]] == notebook_stems()
    assert not runs.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_format_plan_names_every_run():
    plans = plan_chain(load_profile("smoke"), only=["03"])
    text = format_plan(plans, {"03_batch_alignment": 120.0})
    assert "03_batch_alignment  (about 2 min)" in text
    assert text.count("run        train") == len(_trains(plans[0]))
