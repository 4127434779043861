"""The up-front estimate: the cost model on hand-worked cases, the measurement on the tiny model, the
pipeline's record and the report's column."""

from __future__ import annotations

import math

import pytest

from xlalign.config import derive
from xlalign.estimate import (
    KERNEL_START_S,
    REPORT_BUILD_S,
    TRAIN_SETUP_S,
    Throughput,
    about,
    cached_throughput,
    chain_lines,
    estimate_plan,
    estimate_plan_steps,
    measure,
    notebook_seconds,
    run_seconds,
)
from xlalign.plan import ModelRun, NotebookPlan, plan_chain, plan_notebook


def _th(**kw) -> Throughput:
    base = dict(
        model="m",
        dtype="float32",
        device="cpu",
        load_s=2.0,
        forward_s_per_token=0.001,
        train_s_per_token=0.003,
        decode_s_per_step=0.05,
        decode_batch=8,
        startup_s=5.0,
        tokenize_s_per_row=0.0,
        tokens_per_lang={"en": 100.0, "ar": 300.0},
        answer_tokens=5.0,
    )
    return Throughput(**(base | kw))


def test_an_evaluation_costs_a_load_and_its_prompt_tokens(tiny_profile):
    rows = [{"lang": "en"}] * 3 + [{"lang": "ar"}] * 2  # 3 x 100 + 2 x 300 = 900 tokens
    run = ModelRun("eval", "x", "m", items=5, profile=tiny_profile, rows=rows)
    assert run_seconds(run, _th()) == pytest.approx(2.0 + 900 * 0.001)
    gen = derive(tiny_profile, eval={"mode": "generation", "batch_size": 2, "max_new_tokens": 10})
    run = ModelRun("eval", "x", "m", items=5, profile=gen, rows=rows)
    # + 3 batches x 10 decoding steps
    assert run_seconds(run, _th()) == pytest.approx(2.0 + 0.9 + 3 * 10 * 0.05)


def test_training_counts_steps_times_tokens_and_dpo_adds_the_reference(tiny_profile):
    pairs = [{"lang": "en"}, {"lang": "ar"}]  # 200 prompt tokens a pair on average
    orpo = derive(tiny_profile, train={"method": "orpo", "batch_size": 3, "share_prompt": True})
    run = ModelRun("train", "t", "m", steps=4, profile=orpo, pairs=pairs)
    per_pair = 200 + 2 * 5  # one prompt encoding, two answers
    want = 2.0 + TRAIN_SETUP_S + 4 * 3 * per_pair * 0.003
    assert run_seconds(run, _th()) == pytest.approx(want)
    unshared = derive(orpo, train={"share_prompt": False})
    run = ModelRun("train", "t", "m", steps=4, profile=unshared, pairs=pairs)
    assert run_seconds(run, _th()) == pytest.approx(
        2.0 + TRAIN_SETUP_S + 4 * 3 * 2 * (200 + 5) * 0.003
    )
    # TRL's ORPO tokenizes every pair with 5 tokenizer calls before the first step, DPO with 3.
    run = ModelRun("train", "t", "m", steps=4, profile=orpo, pairs=pairs)
    assert run_seconds(run, _th(tokenize_s_per_row=0.01)) == pytest.approx(want + 5 * 2 * 0.01)
    dpo = derive(orpo, train={"method": "dpo"})
    run = ModelRun("train", "t", "m", steps=4, profile=dpo, pairs=pairs)
    assert run_seconds(run, _th()) == pytest.approx(want + 4 * 3 * per_pair * 0.001)


def test_a_reused_run_costs_nothing_and_a_notebook_adds_its_kernel(tiny_profile):
    rows = [{"lang": "en"}]
    fresh = ModelRun("eval", "a", "m", profile=tiny_profile, rows=rows)
    reused = ModelRun("eval", "a", "m", profile=tiny_profile, rows=rows, reuses="a")
    assert run_seconds(reused, _th()) == 0.0
    nb = NotebookPlan("03_x", runs=[fresh, reused])
    assert notebook_seconds(nb, _th()) == pytest.approx(5.0 + KERNEL_START_S + 2.0 + 0.1)


def test_calm_runs_use_the_measured_prompt_length_and_the_probe_its_own_pass(tiny_profile):
    th = _th(calm_prompt_tokens=300.0, probe_s_per_token=0.004)
    p = derive(tiny_profile, calm={"max_new_tokens": 20, "train": {"save_steps": 0}})
    sft = ModelRun("calm-train", "s", "m", method="sft", batch_size=2, steps=3, profile=p)
    # unmeasured CALM costs fall back to the probe trainer's
    assert run_seconds(sft, th) == pytest.approx(2.0 + TRAIN_SETUP_S + 3 * 2 * 320 * 0.003)
    dpo = ModelRun("calm-train", "d", "m", method="dpo", batch_size=2, steps=3, profile=p)
    # chosen and rejected after one encoding of their prompt, trained and passed through the reference
    assert p.calm.train.share_prompt
    assert run_seconds(dpo, th) == pytest.approx(
        2.0 + TRAIN_SETUP_S + 3 * 2 * (300 + 2 * 20) * (0.003 + 0.001)
    )
    # each with its own prompt where the prompt is not shared
    unshared = derive(p, calm={"train": {"share_prompt": False}})
    dpo = ModelRun("calm-train", "d", "m", method="dpo", batch_size=2, steps=3, profile=unshared)
    assert run_seconds(dpo, th) == pytest.approx(
        2.0 + TRAIN_SETUP_S + 3 * 2 * 2 * 320 * (0.003 + 0.001)
    )
    ev = ModelRun("calm-eval", "calm/predictions/base", "m", items=4, batch_size=2, new_tokens=20)
    ev.profile = p
    assert run_seconds(ev, th) == pytest.approx(2.0 + 4 * 300 * 0.001 + 2 * 20 * 0.05)


def test_calm_runs_use_their_own_measured_costs(tiny_profile):
    th = _th(
        calm_prompt_tokens=300.0,
        calm_train_s_per_token=0.006,
        calm_ref_s_per_token=0.002,
        sample_decode_s_per_step=0.2,
        greedy_decode_s_per_step=0.07,
        save_s=0.5,
        adapter_load_s=1.5,
    )
    p = derive(
        tiny_profile, calm={"max_new_tokens": 20, "num_samples": 2, "train": {"save_steps": 2}}
    )
    dpo = ModelRun("calm-train", "d", "m", method="dpo", batch_size=1, steps=5, profile=p)
    saves = 5 // 2 + 1  # steps 2 and 4, and the final adapter
    assert run_seconds(dpo, th) == pytest.approx(
        2.0 + TRAIN_SETUP_S + saves * 0.5 + 5 * (300 + 2 * 20) * (0.006 + 0.002)
    )
    # 12 samples = 6 prompts x m = 2; 4 prompts per batch: 2 batches of 20 steps
    sample = ModelRun("calm-sample", "s", "m", items=12, batch_size=4, new_tokens=20, profile=p)
    assert run_seconds(sample, th) == pytest.approx(2.0 + 6 * 300 * 0.001 + 2 * 20 * 0.2)
    base = ModelRun("calm-eval", "calm/predictions/base", "m", items=4, batch_size=2, new_tokens=20)
    base.profile = p
    trained = ModelRun("calm-eval", "calm/predictions/calm", "m", items=4, batch_size=2)
    trained.new_tokens, trained.profile, trained.adapter = 20, p, True
    assert run_seconds(base, th) == pytest.approx(2.0 + 4 * 300 * 0.001 + 2 * 20 * 0.07)
    assert run_seconds(trained, th) == pytest.approx(run_seconds(base, th) + 1.5)  # the adapter


def test_checkpoints_and_adapter_loads_are_counted(tiny_profile):
    pairs = [{"lang": "en"}, {"lang": "ar"}]
    th = _th(save_s=0.5, adapter_load_s=1.5)
    orpo = derive(tiny_profile, train={"method": "orpo", "batch_size": 3, "share_prompt": True})
    without = ModelRun("train", "t", "m", steps=4, profile=derive(orpo, train={"save_steps": 0}))
    without.pairs = pairs
    every2 = ModelRun("train", "t", "m", steps=4, profile=derive(orpo, train={"save_steps": 2}))
    every2.pairs = pairs
    assert run_seconds(every2, th) == pytest.approx(run_seconds(without, th) + 2 * 0.5)
    rows = [{"lang": "en"}]
    base = ModelRun("eval", "b", "m", profile=tiny_profile, rows=rows)
    trained = ModelRun("eval", "a", "m", profile=tiny_profile, rows=rows, adapter=True)
    assert run_seconds(trained, th) == pytest.approx(run_seconds(base, th) + 1.5)


def test_the_probe_and_the_report_build(tiny_profile):
    th = _th(calm_prompt_tokens=300.0, probe_s_per_token=0.004)
    rows = [{"lang": "en"}] * 2
    probe = ModelRun("probe", "k", "m", profile=tiny_profile, rows=rows)
    assert run_seconds(probe, th) == pytest.approx(2.0 + 200 * 0.004)
    assert run_seconds(probe, _th()) == pytest.approx(2.0 + 200 * 0.001)  # unmeasured: scoring's
    report = NotebookPlan("07_report")
    assert notebook_seconds(report, _th()) == pytest.approx(5.0 + KERNEL_START_S + REPORT_BUILD_S)


def test_data_steps_count_their_tokenizer_loads(tiny_profile):
    nb = NotebookPlan("01_x", tokenizer_loads=2)
    base = notebook_seconds(NotebookPlan("01_x"), _th(tokenizer_load_s=1.5))
    assert notebook_seconds(nb, _th(tokenizer_load_s=1.5)) == pytest.approx(base + 2 * 1.5)
    # in the chain: 01 and 03 load one for their data, 05 one more for the machine-translated data;
    # 06 reuses 03's arm, so it loads none (run alone it trains the arm and loads one)
    loads = {nb.notebook[:2]: nb.tokenizer_loads for nb in plan_chain(tiny_profile)}
    assert loads["01"] == 1 and loads["03"] == 1 and loads["05"] == 2
    assert loads["00"] == 0 and loads["02"] == 0 and loads["06"] == 0
    assert plan_notebook(tiny_profile, "06", alone=True).tokenizer_loads == 1


def test_faster_measurements_give_proportionally_shorter_estimates(tiny_profile):
    plans = plan_chain(tiny_profile)
    slow = estimate_plan(plans, _th())
    fast = estimate_plan(
        plans,
        _th(forward_s_per_token=0.0005, train_s_per_token=0.0015, decode_s_per_step=0.025),
    )
    assert set(slow) == {nb.notebook for nb in plans}
    trained = "03_batch_alignment"
    assert fast[trained] < slow[trained]
    assert all(fast[k] <= slow[k] for k in slow)


def test_the_lines_it_prints():
    assert about("notebook 03's arms", 150) == (
        "computing notebook 03's arms, about 2 min on this machine"
    )
    lines = chain_lines({"00_a": 30.0, "01_b": 600.0}, done={"00_a": 28.0})
    assert lines[0].strip().startswith("00_a") and "done earlier" in lines[0]
    assert "about 10 min" in lines[1]
    assert lines[-1].strip().startswith("total") and "about 10 min" in lines[-1]


def test_measure_on_the_tiny_model_is_positive_and_cached(tiny_profile):
    th = measure(tiny_profile, fresh=True, startup=False)
    keys = ("forward_s_per_token", "train_s_per_token", "decode_s_per_step", "load_s")
    measured = (
        "probe_s_per_token",
        "sample_decode_s_per_step",
        "greedy_decode_s_per_step",
        "calm_train_s_per_token",
        "calm_ref_s_per_token",
        "save_s",
        "adapter_load_s",
        "tokenizer_load_s",
    )
    for key in (*keys, *measured):
        value = getattr(th, key)
        assert math.isfinite(value) and value > 0, key
    assert set(th.tokens_per_lang) == set(
        tiny_profile.data.train_langs + tiny_profile.data.unseen_langs
    )
    # what each part of the measurement cost, adding up to (at most) the whole
    assert {"first model load", "scoring", "probe training step", "CALM sampling"} <= set(
        th.parts_s
    )
    assert all(v >= 0 for v in th.parts_s.values())
    assert sum(th.parts_s.values()) <= th.measured_s + 0.05 * len(th.parts_s)
    # measured on the shipped CALM items, not the fallback constant
    assert th.calm_prompt_tokens > 20
    assert th.calm_prompt_tokens != 160
    again = cached_throughput(tiny_profile)
    assert again is not None and again.measured_at == th.measured_at
    assert measure(tiny_profile).measured_at == th.measured_at  # read back, not measured again


def test_the_pipeline_records_the_estimate_and_the_report_shows_it(tiny_profile, tmp_path, capsys):
    from xlalign.pipeline import up_front_estimate
    from xlalign.report.build import wall_time_lines
    from xlalign.runs import start_run

    run = start_run(tiny_profile, tmp_path / "run")
    try:
        run.step("notebook/00_quickstart", status="ok", wall_time_s=12.0)
        rec = up_front_estimate(tiny_profile, run)
        out = capsys.readouterr().out
        assert rec is not None and "expected wall time" in out
        assert "00_quickstart" in out and "done earlier" in out and "total" in out
        assert run.record["estimate"]["notebooks_s"] == rec["notebooks_s"]
        guess = rec["notebooks_s"]["00_quickstart"]
        table = "\n".join(wall_time_lines(run.record))
        assert f"| notebook/00_quickstart | 12.0 | {guess} | {12.0 / guess:.2f} |  |" in table
        # each training and evaluation has its own estimate, from the same pass as the notebooks'
        per_step = rec["steps_s"]
        trains = [k for k in per_step if k.startswith("train/")]
        evals = [k for k in per_step if k.startswith("eval/")]
        assert trains and evals and all(v > 0 for v in per_step.values())
        assert run.record["estimate"]["steps_s"] == per_step
        # a training's row shows its whole call (what its estimate counts), its steps as a note
        run.step(trains[0], wall_time_s=5.0, call_s=9.0, steps=2)
        run.step(evals[0], wall_time_s=3.0, items=4)
        table = "\n".join(wall_time_lines(run.record))
        g = per_step[trains[0]]
        assert f"| {trains[0]} | 9.0 | {g} | {9.0 / g:.2f} | trainer steps 5.0 s |" in table
        g = per_step[evals[0]]
        assert f"| {evals[0]} | 3.0 | {g} | {3.0 / g:.2f} |  |" in table
    finally:
        run.finish("ok")


def test_a_failed_measurement_never_stops_the_chain(tiny_profile, tmp_path, monkeypatch, capsys):
    import xlalign.estimate as estimate
    from xlalign.pipeline import up_front_estimate
    from xlalign.runs import start_run

    def broken(*a, **k):
        raise RuntimeError("no model here")

    monkeypatch.setattr(estimate, "measure", broken)
    run = start_run(tiny_profile, tmp_path / "run")
    try:
        assert up_front_estimate(tiny_profile, run) is None
        assert "no up-front estimate (RuntimeError: no model here)" in capsys.readouterr().out
        assert "estimate" not in run.record
    finally:
        run.finish("ok")


def test_the_report_alone_reuses_the_days_measurement_or_goes_without(
    tiny_profile, tmp_path, monkeypatch, capsys
):
    """``--only 07`` loads no model: measuring (about a minute) would cost more than the notebook."""
    import dataclasses
    import json
    import time

    import xlalign.estimate as estimate
    from xlalign.pipeline import up_front_estimate
    from xlalign.runs import start_run

    def must_not_measure(*a, **k):
        raise RuntimeError("measured")

    monkeypatch.setattr(estimate, "measure", must_not_measure)
    profile = dataclasses.replace(tiny_profile, cache_dir=str(tmp_path / "cache"))
    run = start_run(profile, tmp_path / "run")
    try:
        assert up_front_estimate(profile, run, only=["07"]) is None
        out = capsys.readouterr().out
        assert "the notebooks to run load no model" in out and "measured" not in out
        assert "estimate" not in run.record

        cache = estimate._cache_file(profile, "float32")
        cache.parent.mkdir(parents=True)
        th = _th(model="tiny-random", measured_at=time.time() - 600)
        cache.write_text(json.dumps(th.to_dict()))
        rec = up_front_estimate(profile, run, only=["07"])
        out = capsys.readouterr().out
        assert "reused this machine's measurement of tiny-random" in out and "10 min ago" in out
        assert rec["notebooks_s"] == {"07_report": 5.0 + KERNEL_START_S + REPORT_BUILD_S}
        assert run.record["estimate"]["throughput"]["measured_at"] == th.measured_at

        # a notebook that loads a model still measures afresh, the day's cache notwithstanding
        assert up_front_estimate(profile, run, only=["00"]) is None
        assert "no up-front estimate (RuntimeError: measured)" in capsys.readouterr().out
    finally:
        run.finish("ok")


def test_prompts_scored_earlier_in_the_run_cost_only_the_adapted_layers(tiny_profile):
    rows = [{"lang": "en", "prompt": f"p{i}"} for i in range(4)]  # 4 x 100 tokens
    p = derive(tiny_profile, train={"reuse_frozen": True}, lora={"top_layers": 1})
    th = _th(n_layers=4)
    first = ModelRun("eval", "base", "m", profile=p, rows=rows)
    again = ModelRun(
        "eval", "adapter", "m", profile=p, rows=rows[:2] + [{"lang": "en", "prompt": "q"}]
    )
    scored: set = set()
    assert run_seconds(first, th, scored) == pytest.approx(2.0 + 400 * 0.001)
    # two prompts already scored: a quarter of their forward (1 of 4 layers), the new one in full
    assert run_seconds(again, th, scored) == pytest.approx(2.0 + (0.25 * 200 + 100) * 0.001)
    off = derive(p, train={"reuse_frozen": False})
    rerun = ModelRun("eval", "x", "m", profile=off, rows=rows)
    assert run_seconds(rerun, th, scored) == pytest.approx(2.0 + 400 * 0.001)
    # a chain carries what was scored from one notebook to the next; a notebook alone does not
    nb1, nb2 = NotebookPlan("02_x", runs=[first]), NotebookPlan("03_x", runs=[again])
    chain = estimate_plan([nb1, nb2], th)
    assert chain["03_x"] < round(notebook_seconds(nb2, th), 1)
    # the same pass prices each step under its run.json name; one planned twice keeps the later
    # price, as run.json keeps the later call, and a reused run (no compute) is left out
    twice = ModelRun("eval", "base", "m", profile=p, rows=rows + [{"lang": "en", "prompt": "r"}])
    reused = ModelRun("eval", "old", "m", profile=p, rows=rows, reuses="base")
    nb3 = NotebookPlan("04_x", runs=[twice, reused])
    notebooks, steps = estimate_plan_steps([nb1, nb2, nb3], th)
    assert notebooks == estimate_plan([nb1, nb2, nb3], th)
    assert set(steps) == {"eval/base", "eval/adapter"}
    assert steps["eval/adapter"] == pytest.approx(2.0 + (0.25 * 200 + 100) * 0.001, abs=0.06)
    # its 4 prompts scored before cost a quarter of their 400 tokens, the new "r" its 100 in full
    assert steps["eval/base"] == pytest.approx(2.0 + (0.25 * 400 + 100) * 0.001, abs=0.06)


def test_training_counts_padding_and_reuses_the_other_arms_frozen_states(tiny_profile):
    # 4 groups in en (100 tokens) and ar (300): an aligned batch of 2 pads both rows to 300 tokens.
    pairs = [
        {
            "sample_id": f"g{g}",
            "lang": lang,
            "prompt": f"{lang}{g}",
            "label": "Yes" if g % 2 else "No",
        }
        for g in range(4)
        for lang in ("en", "ar")
    ]
    p = derive(
        tiny_profile,
        data={"train_langs": ["en", "ar"]},
        experiments={"batch_sizes": [1, 2]},
        train={"method": "orpo", "batch_size": 2, "share_prompt": True, "reuse_frozen": True},
        lora={"top_layers": 1},
    )
    th = _th(n_layers=4)
    aligned = ModelRun("train", "a", "m", steps=2, profile=p, pairs=pairs)
    per_step = 2 * 300 + 2 * 2 * 5  # padded prompts + two answers a row
    assert run_seconds(aligned, th) == pytest.approx(2.0 + TRAIN_SETUP_S + 2 * per_step * 0.003)
    # The uncoupled arm trains on the same rows; after the aligned arm, their frozen layers (3 of 4)
    # are reused: 3/4 of a forward over their 2 x (100 + 300) real tokens is saved.
    unc = derive(p, train={"batching": "uncoupled"})
    scored: set = set()
    first = run_seconds(aligned, th, scored)
    second = run_seconds(ModelRun("train", "u", "m", steps=2, profile=unc, pairs=pairs), th, scored)
    alone = run_seconds(ModelRun("train", "u", "m", steps=2, profile=unc, pairs=pairs), th)
    assert second == pytest.approx(alone - 0.75 * 800 * 0.001)
    assert first == pytest.approx(run_seconds(aligned, th))
    # Trainers keep the states in the run directory: the next notebook's trainings read them, as
    # the same notebook's would; a notebook run alone computes its own.
    nb_a = NotebookPlan("03_x", runs=[aligned])
    nb_u = NotebookPlan(
        "05_x", runs=[ModelRun("train", "u", "m", steps=2, profile=unc, pairs=pairs)]
    )
    chain = estimate_plan([nb_a, nb_u], th)
    assert chain["05_x"] == pytest.approx(notebook_seconds(nb_u, th) - 0.75 * 800 * 0.001, abs=0.05)
    both = estimate_plan([NotebookPlan("03_x", runs=[aligned, nb_u.runs[0]])], th)
    assert both["03_x"] == pytest.approx(chain["03_x"] + second, abs=0.1)


def test_calm_evaluation_decodes_in_its_own_batches(tiny_profile):
    def calm_eval_batches(p):
        return {r.batch_size for nb in plan_chain(p) for r in nb.runs if r.kind == "calm-eval"}

    assert calm_eval_batches(tiny_profile) == {tiny_profile.eval.batch_size}  # 0: the probe's
    assert calm_eval_batches(derive(tiny_profile, calm={"eval_batch_size": 5})) == {5}


def test_benchmarks_count_each_tasks_requests(tiny_profile):
    from xlalign.estimate import BENCH_SETUP_S, BENCH_TOKENS_PER_REQUEST
    from xlalign.evaluation.benchmarks import requests_per_item

    assert [requests_per_item(t) for t in ("xl_local_mc_en", "xl_local_lambada_es", "paws_de")] == [
        4,
        1,
        2,
    ]
    run = ModelRun("benchmark", "lm-eval/x", "m", items=16, requests=40, profile=tiny_profile)
    want = 2.0 + BENCH_SETUP_S + 40 * BENCH_TOKENS_PER_REQUEST * 0.001
    assert run_seconds(run, _th()) == pytest.approx(want)
    # the plan's stand-in runs, 3 items a task: the multiple-choice task's 4 choices, LAMBADA's 1
    p = derive(tiny_profile, experiments={"benchmark_limit": 3})
    plan = next(nb for nb in plan_chain(p) if nb.notebook.startswith("06"))
    runs = [r for r in plan.runs if r.kind == "benchmark"]
    assert " ".join(plan.benchmarks).count("xl_local_") == 2, plan.benchmarks
    assert runs and all(r.requests == 3 * (4 + 1) for r in runs)
    # A limit past the stand-ins' 4 items a task counts the items they hold (it counted 8 x 5).
    p8 = derive(tiny_profile, experiments={"benchmark_limit": 8})
    plan8 = next(nb for nb in plan_chain(p8) if nb.notebook.startswith("06"))
    runs8 = [r for r in plan8.runs if r.kind == "benchmark"]
    assert runs8 and all(r.requests == 4 * (4 + 1) and r.items == 2 * 4 for r in runs8)
    assert all(r.local_tasks for r in runs8)
    # The stand-ins' requests cost their measured length; other tasks' the default length.
    th = _th(bench_tokens_per_request=30.0)
    local = ModelRun("benchmark", "x", "m", requests=40, local_tasks=True, profile=tiny_profile)
    assert run_seconds(local, th) == pytest.approx(2.0 + BENCH_SETUP_S + 40 * 30 * 0.001)
    assert run_seconds(run, th) == pytest.approx(want)


def test_the_stand_in_requests_are_lm_evals_prompts():
    from xlalign.evaluation.benchmarks import local_task_requests

    mc = local_task_requests("xl_local_mc_en")
    assert len(mc) == 4 and all(len(item) == 4 for item in mc)
    first = mc[0]
    assert first[0].startswith("The following are multiple choice questions")
    assert first[0].endswith("\nAnswer: A") and first[3].endswith("\nAnswer: D")
    lam = local_task_requests("xl_local_lambada_es", limit=2)
    assert len(lam) == 2 and lam[0][0].startswith("Abrió la vieja caja")
    assert local_task_requests("mmmlu_en") is None and local_task_requests("xl_local_nope") is None
