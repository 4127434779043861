"""Tests for xlalign.evaluation.benchmarks: lm-eval task names, local tasks end to end, PEFT wrapping."""

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from xlalign.config import ALL_LANGS
from xlalign.evaluation.benchmarks import (
    LOCAL_TASKS,
    LOCAL_TASKS_DIR,
    PAPER_TASKS,
    BenchmarkError,
    item_rows,
    language_rows,
    missing_languages,
    paper_task_names,
    run_benchmarks,
    task_manager,
)
from xlalign.models import tiny_random_dir

LOCAL_NAMES = paper_task_names(list(LOCAL_TASKS), ["en", "es"], registry=LOCAL_TASKS)


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> Path:
    cache = os.environ.get("XLALIGN_CACHE")
    return tiny_random_dir(Path(cache) if cache else tmp_path_factory.mktemp("xlalign-cache"))


def load_tiny(path: Path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def local_run(tiny_path, tmp_path_factory):
    """One end-to-end run on every local task, from an unrelated directory, in training mode."""
    model, tokenizer = load_tiny(tiny_path)
    model.train()
    cwd = os.getcwd()
    # Relative data_files must resolve against the task folder, not the current directory.
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        result = run_benchmarks(model, tokenizer, LOCAL_NAMES, limit=3, seed=0)
    finally:
        os.chdir(cwd)
    return model, result


# ---------------------------------------------------------------- task names


def test_paper_tasks_are_registered_leaf_tasks():
    import lm_eval.tasks

    # The cached TaskManager that run_benchmarks uses: lm-eval's built-in index, as in
    # TaskManager().all_tasks (listing only, no download), plus LOCAL_TASKS_DIR. Sharing it saves
    # a second ~10 s indexing; the yaml_path check below keeps local files out of the answer.
    manager = task_manager()
    names = [n for cells in PAPER_TASKS.values() for tasks in cells.values() for n in tasks]
    assert len(names) == len(set(names))
    missing = [n for n in names if n not in manager.all_tasks]
    assert not missing, f"not registered in lm-eval: {missing[:10]}"
    not_leaf = [n for n in names if n not in manager.all_subtasks]
    assert not not_leaf, f"groups or tags, not tasks: {not_leaf[:10]}"
    assert not set(names) & (set(manager.all_groups) | set(manager.all_tags))
    builtin = Path(lm_eval.tasks.__file__).resolve().parent
    assert all(manager.task_index[n].yaml_path.resolve().is_relative_to(builtin) for n in names)
    # Names whose tags or groups would pull in extra variants are exactly what we must avoid.
    assert "mgsm_cot_native" in manager.all_tags
    assert "mmmlu_ar_xy" in manager.all_groups


def test_paper_language_coverage():
    assert missing_languages(ALL_LANGS) == {
        "mmmlu": ["th", "vi", "hu", "ro"],
        "mgsm": ["ar", "pt", "vi", "hu", "ro"],
        "mgsm_native_cot": ["ar", "pt", "vi", "hu", "ro"],
        "pawsx": ["ar", "pt", "th", "vi", "hu", "ro"],
        "lambada": ["ar", "ja", "pt", "zh", "th", "vi", "hu", "ro"],
        "lambada_stablelm": ["ar", "ja", "zh", "th", "vi", "hu", "ro"],
    }
    assert len(PAPER_TASKS["mmmlu"]["ar"]) == 57
    assert PAPER_TASKS["mmmlu"]["ar"][0] == "mmmlu_ar_xy_abstract_algebra"
    assert PAPER_TASKS["mmmlu"]["en"][0] == "mmlu_abstract_algebra"


def test_paper_task_names_explicit_and_ordered():
    assert paper_task_names(["mgsm", "pawsx"], ["en", "ja"]) == [
        "mgsm_direct_en",
        "mgsm_direct_ja",
        "paws_en",
        "paws_ja",
    ]
    assert paper_task_names("lambada", "fr") == ["lambada_openai_mt_fr"]
    assert len(paper_task_names("mmmlu", ["ar", "zh"])) == 2 * 57
    assert paper_task_names("pawsx", ["ar", "es"], skip_missing=True) == ["paws_es"]


def test_paper_task_names_missing_language_says_which():
    with pytest.raises(BenchmarkError, match=r"'mgsm' has no task for language 'ar'.*en es fr"):
        paper_task_names(["mgsm"], ["en", "ar"])
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mmlu'.*mmmlu"):
        paper_task_names("mmlu", "en")


def test_bad_task_names_fail_before_running(tiny_path):
    model, tokenizer = load_tiny(tiny_path)
    with pytest.raises(BenchmarkError) as err:
        run_benchmarks(model, tokenizer, ["xl_local_mc_en", "mgsm_direct_jp"])
    msg = str(err.value)
    assert "\n" not in msg
    assert "'mgsm_direct_jp'" in msg and "mgsm_direct_ja" in msg
    assert "xl_local_mc_en" not in msg  # valid names are not reported
    with pytest.raises(BenchmarkError, match="'mgsm_cot_native' is an lm-eval tag.*mgsm_en_cot_"):
        run_benchmarks(model, tokenizer, ["mgsm_cot_native"])
    with pytest.raises(BenchmarkError, match="'mmmlu_ar_xy' is an lm-eval group"):
        run_benchmarks(model, tokenizer, ["mmmlu_ar_xy"])


# ---------------------------------------------------------------- local tasks end to end


def test_local_task_files():
    for path in sorted((LOCAL_TASKS_DIR / "data").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(rows) == 4, path.name
        if path.name.startswith("mc_"):
            assert all(r["Answer"] in "ABCD" and r["Question"] for r in rows)
        else:
            assert all(len(r["text"].split()) > 5 for r in rows)


def test_run_benchmarks_local_rows(local_run):
    model, result = local_run
    assert model.training, "run_benchmarks must restore the caller's training mode"
    rows = result["rows"]
    got = {(r["task"], r["metric"]) for r in rows}
    assert got == {
        (task, metric)
        for task in LOCAL_NAMES
        for metric in (("acc", "acc_norm") if "_mc_" in task else ("perplexity", "acc"))
    }
    for row in rows:
        assert row["filter"] == "none" and row["n"] == 3
        assert math.isfinite(row["value"]), row
        if row["metric"] == "perplexity":
            assert row["value"] > 1
        else:
            assert 0 <= row["value"] <= 1
        assert row["stderr"] is None or math.isfinite(row["stderr"])
    assert result["raw"]["config"]["random_seed"] == 0


def test_item_rows_reproduce_lm_eval_perplexity(local_run):
    _, result = local_run
    items = item_rows(result["raw"])
    assert len(items) == len(LOCAL_NAMES) * 3 * 2
    for row in result["rows"]:
        if row["metric"] != "perplexity":
            continue
        nll = [i["value"] for i in items if i["task"] == row["task"] and i["metric"] == "nll"]
        assert len(nll) == 3 and min(nll) > 0
        assert math.exp(sum(nll) / len(nll)) == pytest.approx(row["value"], rel=1e-6)


def test_language_rows_local(local_run):
    _, result = local_run
    cells = language_rows(result["rows"], registry=LOCAL_TASKS)
    assert {(c["benchmark"], c["lang"], c["metric"]) for c in cells} == {
        ("xl_local_mc", lang, m) for lang in ("en", "es") for m in ("acc", "acc_norm")
    } | {("xl_local_lambada", lang, m) for lang in ("en", "es") for m in ("perplexity", "acc")}


def test_language_rows_pools_multi_task_cells_by_size():
    registry = {"bench": {"xx": ("t1", "t2"), "yy": ("t3",)}}

    def row(task, metric, value, stderr, n):
        return dict(task=task, metric=metric, filter="none", value=value, stderr=stderr, n=n)

    rows = [
        row("t1", "acc", 0.5, 0.1, 10),
        row("t2", "acc", 1.0, 0.0, 30),
        row("t1", "perplexity", 2.0, None, 10),
        row("t2", "perplexity", 8.0, None, 30),
    ]
    cells = {c["metric"]: c for c in language_rows(rows, registry)}
    assert set(cells) == {"acc", "perplexity"}  # "yy" (t3) was not evaluated: no cell
    assert cells["acc"]["value"] == pytest.approx((0.5 * 10 + 1.0 * 30) / 40)
    assert cells["acc"]["n"] == 40 and 0 < cells["acc"]["stderr"] < 0.1
    log_mean = (10 * math.log(2.0) + 30 * math.log(8.0)) / 40
    assert cells["perplexity"]["value"] == pytest.approx(math.exp(log_mean))


# ---------------------------------------------------------------- PEFT adapter


def test_adapter_effect_present_in_loglikelihoods(tiny_path):
    from peft import LoraConfig, get_peft_model

    def nll(model, tokenizer):
        result = run_benchmarks(model, tokenizer, ["xl_local_lambada_en"], limit=4)
        return [i["value"] for i in item_rows(result["raw"]) if i["metric"] == "nll"]

    base, tokenizer = load_tiny(tiny_path)
    base_nll = nll(base, tokenizer)

    torch.manual_seed(1)
    # init_lora_weights=False draws B at random too, so the adapter changes the function at once.
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(load_tiny(tiny_path)[0], config)
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    peft_nll = nll(peft_model, tokenizer)
    merged_nll = nll(copy.deepcopy(peft_model).merge_and_unload(), tokenizer)

    assert len(base_nll) == len(peft_nll) == 4
    assert max(abs(a - b) for a, b in zip(base_nll, peft_nll, strict=True)) > 1e-3
    # The wrapped PeftModel scores exactly what the merged weights score.
    assert peft_nll == pytest.approx(merged_nll, abs=1e-4)


# ---------------------------------------------------------------- the profiles' benchmarks


def test_paper_profile_runs_the_papers_benchmarks_in_its_languages():
    from xlalign.config import load_profile
    from xlalign.evaluation.benchmarks import check_task_names, table_columns
    from xlalign.experiments import benchmark_arms, benchmark_registry
    from xlalign.paper import load_table

    profile = load_profile("paper")
    registry = benchmark_registry(profile)
    langs = {bench: list(cells) for bench, cells in registry.items()}
    # Each benchmark in the paper's eleven languages that lm-eval 0.4.13 has.
    assert langs == {
        "mmmlu": ["en", "ar", "es", "fr", "ja", "pt", "zh"],
        "mgsm": ["en", "es", "fr", "ja", "zh", "th"],
        "pawsx": ["en", "es", "fr", "ja", "zh"],
        "lambada": ["en", "es", "fr"],
    }
    assert (
        registry["mmmlu"]["ar"] == PAPER_TASKS["mmmlu"]["ar"] and len(registry["mmmlu"]["en"]) == 57
    )
    assert registry["lambada"]["fr"] == ("lambada_openai_mt_fr",)
    assert registry["mgsm"]["th"] == ("mgsm_direct_th",)
    names = [t for cells in registry.values() for ts in cells.values() for t in ts]
    check_task_names(names, task_manager())  # every one a registered leaf task, no group or tag
    assert not any(n.startswith("xl_local") for n in names)

    # The columns and rows of the paper's Tables 2-4 are all produced.
    published = {k: load_table(k) for k in ("ba_t02", "ba_t03", "ba_t04")}
    assert set(table_columns(registry)) == {
        c for t in published.values() for c in t["column"].unique()
    }
    blocks = [block for block, _, _ in benchmark_arms(profile)]
    assert blocks == ["baseline", "dpo_default", "dpo_ours", "orpo_default", "orpo_ours"]
    assert {b for t in published.values() for b in t["block"].unique()} <= set(blocks)


def test_cpu_and_smoke_run_the_labelled_stand_ins():
    from xlalign.config import load_profile
    from xlalign.evaluation.benchmarks import STAND_IN_NOTE, benchmark_plan, is_stand_in
    from xlalign.experiments import benchmark_registry

    for name, langs in (("cpu", ["en", "es"]), ("smoke", ["en"])):
        profile = load_profile(name)
        registry = benchmark_registry(profile)
        assert set(registry) == {"xl_local_mc", "xl_local_lambada"}
        assert all(is_stand_in(b) and list(c) == langs for b, c in registry.items())
    plan = benchmark_plan(["mmmlu", "xl_local_mc"], ["en", "th"])
    assert plan == [
        {
            "benchmark": "mmmlu",
            "langs": ["en"],
            "tasks": 57,
            "stand_in": False,
            "not_available": ["th"],
        },
        {
            "benchmark": "xl_local_mc",
            "langs": ["en"],
            "tasks": 1,
            "stand_in": True,
            "not_available": ["th"],
        },
    ]
    assert "stand-in" in STAND_IN_NOTE and "not MMMLU" in STAND_IN_NOTE


def test_resolve_benchmarks_refuses_a_benchmark_outside_the_languages():
    from xlalign.evaluation.benchmarks import resolve_benchmarks

    with pytest.raises(
        BenchmarkError, match=r"'lambada' has no task in any of.*ar ja.*de en es fr it"
    ):
        resolve_benchmarks(["lambada"], ["ar", "ja"])
    # An explicit lm-eval task name passes through as its own benchmark (checked when it runs).
    assert resolve_benchmarks(["paws_de", "pawsx"], ["de"]) == {
        "paws_de": {"": ("paws_de",)},
        "pawsx": {"de": ("paws_de",)},
    }


# ---------------------------------------------------------------- Tables 2-4 and paired tests


def _items(task, metric, values, filt="none"):
    return [
        dict(task=task, doc_id=i, filter=filt, metric=metric, value=float(v))
        for i, v in enumerate(values)
    ]


REG = {
    "pawsx": {"en": ("paws_en",), "es": ("paws_es",)},
    "lambada": {"en": ("lambada_openai_mt_en",)},
}


def test_paired_tests_mcnemar_and_bootstrap_by_hand():
    from xlalign.evaluation.benchmarks import paired_tests
    from xlalign.evaluation.stats import mcnemar_test

    rng = np.random.default_rng(0)
    acc_a = {"en": rng.integers(0, 2, 40), "es": rng.integers(0, 2, 30)}
    acc_b = {lang: np.where(rng.random(v.size) < 0.3, 1, v) for lang, v in acc_a.items()}
    nll_a = rng.gamma(2.0, 1.5, 50)
    a = _items("paws_en", "acc", acc_a["en"]) + _items("paws_es", "acc", acc_a["es"])
    b = _items("paws_en", "acc", acc_b["en"]) + _items("paws_es", "acc", acc_b["es"])
    a += _items("lambada_openai_mt_en", "nll", nll_a)
    b += _items("lambada_openai_mt_en", "nll", nll_a + 1.0)  # every item one nat worse
    got = {r["column"]: r for r in paired_tests(a, b, REG, a="base", b="ours", n_resamples=500)}
    assert set(got) == {"pawsx_acc", "lambada_ppl"}  # no per-item LAMBADA acc was given

    paws = got["pawsx_acc"]
    ref = mcnemar_test(np.r_[acc_a["en"], acc_a["es"]], np.r_[acc_b["en"], acc_b["es"]])
    assert paws["test"] == "mcnemar" and paws["pvalue"] == ref.pvalue and paws["n"] == 70
    assert (paws["discordant_b"], paws["discordant_c"]) == (ref.b, ref.c) == (0, ref.c)
    # Table cell: unweighted mean over languages, in percent.
    macro = lambda d: 100 * np.mean([d["en"].mean(), d["es"].mean()])  # noqa: E731
    assert paws["value_a"] == pytest.approx(macro(acc_a))
    assert paws["delta"] == pytest.approx(macro(acc_b) - macro(acc_a)) and paws["delta"] > 0
    assert paws["ci_low"] <= paws["delta"] <= paws["ci_high"]

    ppl = got["lambada_ppl"]
    assert ppl["test"] == "paired bootstrap" and ppl["langs"] == "en"
    assert ppl["value_a"] == pytest.approx(math.exp(nll_a.mean()))
    assert ppl["value_b"] == pytest.approx(math.e * ppl["value_a"])
    assert ppl["ci_low"] > 0 and ppl["significant"] and ppl["pvalue"] == pytest.approx(2 / 501)

    same = paired_tests(a, a, REG, n_resamples=200)
    assert all(r["delta"] == 0 and not r["significant"] for r in same)
    assert {r["pvalue"] for r in same} == {1.0}


def test_paired_tests_refuse_different_items():
    from xlalign.evaluation.benchmarks import paired_tests

    a = _items("paws_en", "acc", [1, 0, 1, 1])
    b = _items("paws_en", "acc", [1, 0, 1])
    with pytest.raises(
        BenchmarkError, match=r"pawsx_acc \(en\): 'base' and 'ours' scored different"
    ):
        paired_tests(a, b, REG, a="base", b="ours")
    c = a + _items("paws_es", "acc", [1, 1])
    with pytest.raises(BenchmarkError, match=r"'ours' was evaluated in languages \['en', 'es'\]"):
        paired_tests(a, c, REG, a="base", b="ours")


def test_benchmark_table_layout_and_stand_in_label():
    from xlalign.evaluation.benchmarks import benchmark_table

    items = {
        "baseline": _items("paws_en", "acc", [1, 0, 0, 0]) + _items("paws_es", "acc", [1, 1, 0, 0]),
        "orpo_ours": _items("paws_en", "acc", [1, 1, 1, 0])
        + _items("paws_es", "acc", [1, 1, 1, 1]),
    }
    t = benchmark_table(items, REG, "m", n_resamples=200).set_index("block")
    assert list(t["column"]) == ["pawsx_acc", "pawsx_acc"] and set(t["table"]) == {"ours_t02_04"}
    assert t.loc["baseline", "value"] == pytest.approx(37.5)  # (25 + 50) / 2
    assert t.loc["orpo_ours", "value"] == pytest.approx(87.5)
    assert t.loc["orpo_ours", "delta"] == pytest.approx(50.0) and np.isnan(
        t.loc["baseline", "delta"]
    )
    assert t.loc["baseline", "ci_low"] <= 37.5 <= t.loc["baseline", "ci_high"]
    local = {"xl_local_mc": {"en": ("xl_local_mc_en",)}}
    lt = benchmark_table({"baseline": _items("xl_local_mc_en", "acc", [1, 0])}, local, "m")
    assert list(lt["column"]) == ["local_stand_in_mc_acc"]
    assert list(lt["table"]) == ["ours_local_stand_in"]


def test_tests_on_lm_eval_items_of_two_models(local_run, tiny_path):
    """Base vs a randomly initialised LoRA on the local tasks: lm-eval's own per-item output."""
    from peft import LoraConfig, get_peft_model

    from xlalign.evaluation.benchmarks import benchmark_table, paired_tests

    _, base = local_run
    torch.manual_seed(2)
    config = LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    model, tokenizer = load_tiny(tiny_path)
    other = run_benchmarks(get_peft_model(model, config), tokenizer, LOCAL_NAMES, limit=3, seed=0)
    items_a, items_b = item_rows(base["raw"]), item_rows(other["raw"])
    tests = {r["column"]: r for r in paired_tests(items_a, items_b, LOCAL_TASKS, n_resamples=200)}
    assert set(tests) == {
        "local_stand_in_mc_acc",
        "local_stand_in_lambada_ppl",
        "local_stand_in_lambada_acc",
    }
    assert (
        tests["local_stand_in_mc_acc"]["test"] == "mcnemar"
        and tests["local_stand_in_mc_acc"]["n"] == 6
    )
    assert tests["local_stand_in_lambada_ppl"]["test"] == "paired bootstrap"
    assert all(r["stand_in"] for r in tests.values())
    # The table's cells are lm-eval's own numbers averaged over en and es.
    cells = language_rows(base["rows"], registry=LOCAL_TASKS)
    want = {(c["benchmark"], c["metric"]): [] for c in cells}
    for c in cells:
        want[(c["benchmark"], c["metric"])].append(c["value"])
    table = benchmark_table(
        {"baseline": items_a, "other": items_b}, LOCAL_TASKS, "tiny", n_resamples=50
    )
    got = table[table["block"] == "baseline"].set_index("column")["value"]
    assert got["local_stand_in_mc_acc"] == pytest.approx(
        100 * np.mean(want[("xl_local_mc", "acc")])
    )
    assert got["local_stand_in_lambada_ppl"] == pytest.approx(
        np.mean(want[("xl_local_lambada", "perplexity")]), rel=1e-6
    )
    assert tests["local_stand_in_lambada_ppl"]["value_a"] == pytest.approx(
        got["local_stand_in_lambada_ppl"]
    )


def test_out_of_domain_study_evaluates_base_default_and_ours_per_method(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from xlalign.config import derive, load_profile
    from xlalign.experiments import generalization

    profile = derive(load_profile("smoke"), experiments={"methods": ["dpo", "orpo"]})
    evaluated, arms = [], []

    def arm(profile, run, method, batching):
        arms.append((method, batching))
        label = f"{method}-{batching}"
        return SimpleNamespace(
            output_dir=f"/r/train/{label}", adapter_dir=f"/r/train/{label}/adapter"
        )

    def results(profile, run, label, adapter, tasks, include):
        evaluated.append((label, adapter, tuple(tasks), include))
        shift = len(evaluated)
        mc = [(i + shift) % 3 == 0 for i in range(8)]
        items = _items("xl_local_mc_en", "acc", mc) + _items("xl_local_lambada_en", "acc", mc)
        items += _items("xl_local_lambada_en", "nll", [2.0 + 0.1 * shift] * 8)
        rows = [
            dict(task="xl_local_mc_en", metric="acc", filter="none", value=0.5, stderr=0.1, n=8),
            dict(
                task="xl_local_lambada_en", metric="acc", filter="none", value=0.5, stderr=0.1, n=8
            ),
        ]
        return {"rows": rows, "items": items}

    monkeypatch.setattr(generalization, "notebook03_arm", arm)
    monkeypatch.setattr(generalization, "_benchmark_results", results)
    study = generalization.out_of_domain_study(profile, SimpleNamespace(path=tmp_path))

    assert arms == [
        ("dpo", "uncoupled"),
        ("dpo", "aligned"),
        ("orpo", "uncoupled"),
        ("orpo", "aligned"),
    ]
    labels = [e[0] for e in evaluated]
    assert labels == [
        "baseline-tiny-random",
        "dpo-uncoupled",
        "dpo-aligned",
        "orpo-uncoupled",
        "orpo-aligned",
    ]
    assert evaluated[0][1] is None and evaluated[2][1] == "/r/train/dpo-aligned/adapter"
    assert {e[2] for e in evaluated} == {("xl_local_mc_en", "xl_local_lambada_en")}
    assert {e[3] for e in evaluated} == {str(LOCAL_TASKS_DIR)}

    assert study["stand_in"] and study["stem"] == "out_of_domain_local_stand_in"
    assert study["rows"]["suite"].str.contains("stand-in").all()
    table = study["table"]
    assert set(table["block"]) == {
        "baseline",
        "dpo_default",
        "dpo_ours",
        "orpo_default",
        "orpo_ours",
    }
    assert set(table["table"]) == {"ours_local_stand_in"}
    tests = study["tests"]
    pairs = set(zip(tests["a"], tests["b"], strict=True))
    assert pairs == {
        ("baseline", "dpo_ours"),
        ("dpo_default", "dpo_ours"),
        ("baseline", "orpo_ours"),
        ("orpo_default", "orpo_ours"),
    }
    assert set(tests["column"]) == {
        "local_stand_in_mc_acc",
        "local_stand_in_lambada_ppl",
        "local_stand_in_lambada_acc",
    }
    assert set(tests.loc[tests["column"] == "local_stand_in_lambada_ppl", "test"]) == {
        "paired bootstrap"
    }


def test_paper_columns_name_metrics_and_filters_the_tasks_report():
    """Without a download: each Tables 2-4 column's metric and filter are in its tasks' YAML, so no
    column of the paper profile can come out empty for a misspelt filter."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from xlalign.evaluation.benchmarks import PAPER_COLUMNS

    manager = task_manager()
    for column, (bench, metric, filt, _) in PAPER_COLUMNS.items():
        for lang, tasks in PAPER_TASKS[bench].items():
            cfg = load_yaml(manager.task_index[tasks[0]].yaml_path)
            metrics = [m["metric"] for m in cfg["metric_list"]]
            filters = [f["name"] for f in cfg.get("filter_list", [])] or ["none"]
            assert metric in metrics and filt in filters, (column, lang, metrics, filters)


def test_benchmark_results_are_cached_per_model_and_task_list(monkeypatch, tmp_path):
    from xlalign.config import derive, load_profile
    from xlalign.evaluation import benchmarks as bm
    from xlalign.evaluation import predictions
    from xlalign.experiments import generalization
    from xlalign.runs import start_run

    calls = []

    def fake_run(model, tok, tasks, limit=None, include_path=None, seed=0):
        calls.append((tuple(tasks), limit))
        raw = {"results": {}, "samples": {t: [] for t in tasks}}
        return {"rows": [], "raw": raw}

    monkeypatch.setattr(bm, "run_benchmarks", fake_run)
    monkeypatch.setattr(predictions, "load_eval_model", lambda profile, adapter: (object(), None))
    profile = load_profile("smoke")
    run = start_run(profile, tmp_path / "run")
    tasks = ["xl_local_mc_en"]
    first = generalization._benchmark_results(profile, run, "baseline-x", None, tasks, None)
    again = generalization._benchmark_results(profile, run, "baseline-x", None, tasks, None)
    assert first == again and len(calls) == 1
    assert (run.path / "eval" / "baseline-x" / "benchmarks.json").exists()
    other = derive(profile, experiments={"benchmark_limit": 3})
    generalization._benchmark_results(other, run, "baseline-x", None, tasks, None)
    assert calls == [(("xl_local_mc_en",), 2), (("xl_local_mc_en",), 3)]
    assert "benchmarks/baseline-x" in run.record["steps"]
