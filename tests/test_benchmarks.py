"""Tests for xlalign.evaluation.benchmarks: lm-eval task names, local tasks end to end, PEFT wrapping."""

import copy
import json
import math
import os
from pathlib import Path

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
