"""Tests for xlalign.evaluation: parsing, cached scoring vs full logits, generation, resume."""

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from xlalign.evaluation.metrics import INVALID, validate_predictions
from xlalign.evaluation.parse import parse_nomiracl
from xlalign.evaluation.predictions import agreement, evaluate_probe, load_eval_model
from xlalign.evaluation.scoring import (
    PRED_COLUMNS,
    SCORE_COLUMNS,
    answer_tokens,
    generate_prompts,
    score_prompts,
)
from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT, INSTRUCTION_EN, render_prompt

P, A = ANSWER_PRESENT, ANSWER_ABSENT

# --------------------------------------------------------------------------- parsing

# (model output, what both NoMIRACL's reference and we return)
PARSE_CASES = [
    ("Yes, answer is present", P),
    ("YES, ANSWER IS PRESENT", P),
    ("yes, Answer is Present.", P),
    ("I don't know", A),
    ("  \n\tI don't know", A),  # leading whitespace is never stripped, nor needs to be
    ("I don't\nknow", A),  # newline -> space
    ("I don't\tknow", A),  # tab -> space
    ("I don't\r\nknow", INVALID),  # "\r" is not replaced: "i don't\r know"
    ("I don’t know", INVALID),  # curly apostrophe
    ("İ don't know", INVALID),  # str.lower("İ") is "i" + U+0307
    ("\ufffd\ufffdI don't know\ufffd", A),  # replacement characters around the answer
    ("Yes, answer is pre\ufffd", INVALID),
    ('"Yes, answer is present"\nor "I don\'t know":', INVALID),  # instruction echo: both phrases
    ("I don't know. Yes, answer is present", INVALID),
    ("Yes, answer is present\n\nI don't know", INVALID),
    ("The answer is present in [2].", P),  # edge case: "answer is present"
    ("The answer is not present.", A),  # edge case: "answer is not present"
    ("[1]", P),  # a lone reference counts as "present" when shorter than 10 characters
    (" [3] ", P),
    ("[10]", P),
    ("[١]", P),  # \d matches Arabic-Indic digits in both implementations
    ("[1] [2] [3]", INVALID),  # 11 characters: too long for the reference rule
    ("[a]", INVALID),
    ("", INVALID),
    ("   ", INVALID),
    ("Yes", INVALID),
    ("Maybe.", INVALID),
]


@pytest.fixture(scope="module")
def reference():
    template = pytest.importorskip("nomiracl.prompts.template")
    return template.VanillaTemplate().postprocess


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_matches_nomiracl_reference(reference, text, expected):
    assert reference(text) == expected
    assert parse_nomiracl(text) == expected


def test_both_phrases_branch_of_reference_is_dead():
    # The reference's "both present" branch counts a multi-word phrase among single words, which
    # is always 0: it can only ever return Invalid. We return Invalid directly (documented).
    from nomiracl.util import count_word

    both = "yes, answer is present yes, answer is present i don't know"
    assert count_word(both, P.lower()) == 0
    assert count_word(both, A.lower()) == 0
    assert parse_nomiracl(both) == INVALID


def test_documented_differences_for_non_strings(reference):
    # The reference crashes on non-strings; we never abort an evaluation over one output.
    with pytest.raises(AttributeError):
        reference(None)
    with pytest.raises(TypeError):
        reference(b"I don't know")
    assert parse_nomiracl(None) == INVALID
    assert parse_nomiracl(b"I don't know") == A
    assert parse_nomiracl(b"\xffYes, answer is present") == P  # invalid UTF-8 -> U+FFFD


# --------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("XLALIGN_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("xlcache")


@pytest.fixture(scope="module")
def tiny(cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xlalign.models import ModelUnavailableError, tiny_random_dir

    try:
        path = tiny_random_dir(cache_dir)
    except ModelUnavailableError as exc:
        pytest.skip(str(exc))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tok


QUESTIONS = {
    "en": "Where is the Eiffel Tower?",
    "ja": "エッフェル塔はどこにありますか？",
    "ar": "أين يقع برج إيفل؟",
}


def make_rows(n_samples: int = 3) -> list[dict]:
    """Probe-shaped rows whose prompts differ in length, so batches need padding."""
    rows = []
    for s in range(n_samples):
        for tag, label in (("pos", P), ("neg", A)):
            for li, (lang, question) in enumerate(QUESTIONS.items()):
                sample_id = f"t{s}.q1.{tag}"
                passage = " ".join(["Paris is a city in France."] * (1 + 3 * s + li))
                rows.append(
                    {
                        "item_id": f"{sample_id}.{lang}",
                        "sample_id": sample_id,
                        "query_id": f"t{s}.q1",
                        "topic_id": f"t{s}",
                        "domain": "travel",
                        "lang": lang,
                        "label": label,
                        "split": "test",
                        "doc_topics": [f"t{s}"],
                        "prompt": f"{INSTRUCTION_EN}\nQUESTION: {question}\nCONTEXTS:\n"
                        f"[1] Paris: {passage}\nOUTPUT:",
                    }
                )
    return rows


def slow_scores(model, tok, rendered: str) -> dict:
    """Independent reference: full logits over prompt+answer, unpadded, one answer at a time."""
    prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    out = {}
    for name, answer in (("present", P), ("absent", A)):
        full = tok(rendered + answer, add_special_tokens=False)["input_ids"]
        start = 0  # where the answer's tokens begin: the first id that differs from the prompt's
        while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
            start += 1
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
        token_lp = [logp[i - 1, full[i]].item() for i in range(start, len(full))]
        out[f"logp_first_{name}"] = token_lp[0]
        out[f"logp_full_{name}"] = sum(token_lp)
    return out


def rendered_prompts(tok, rows) -> list[str]:
    return [render_prompt(r["prompt"], tok, "auto") for r in rows]


def test_answer_tokens_part_at_first_token_even_when_tokens_merge(tiny):
    _, tok = tiny
    ctx, present, absent = answer_tokens(tok, "Question?\nOUTPUT:\n")
    assert tok.decode(present[:1]) == "Yes" and tok.decode(absent[:1]) == "I"
    assert tok.decode(present) == P and tok.decode(absent) == A
    # A trailing space merges into the answer (" Yes", " I"): the context stops before it.
    ctx_sp, present_sp, absent_sp = answer_tokens(tok, "Question?\nOUTPUT: ")
    assert tok.decode(ctx_sp) == "Question?\nOUTPUT:"
    assert tok.decode(present_sp[:1]) == " Yes" and tok.decode(absent_sp[:1]) == " I"


def test_scoring_matches_full_logits(tiny):
    model, tok = tiny
    prompts = rendered_prompts(tok, make_rows(2)[:6]) + ["Question?\nOUTPUT: "]  # last one merges
    got = score_prompts(model, tok, prompts, batch_size=4)
    assert len(got) == len(prompts)
    for prompt, g in zip(prompts, got, strict=True):
        ref = slow_scores(model, tok, prompt)
        for key, value in ref.items():
            assert g[key] == pytest.approx(value, abs=1e-4), key
        first_best = P if ref["logp_first_present"] > ref["logp_first_absent"] else A
        assert g["pred"] == first_best


def test_left_padding_gives_batch_size_one_scores(tiny):
    model, tok = tiny
    prompts = rendered_prompts(tok, make_rows(3))
    lengths = {len(tok(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 3  # the batches really are padded
    batched = score_prompts(model, tok, prompts, batch_size=6)
    single = score_prompts(model, tok, prompts, batch_size=1)
    for b, s in zip(batched, single, strict=True):
        assert b["pred"] == s["pred"]
        for key in SCORE_COLUMNS:
            assert b[key] == pytest.approx(s[key], abs=1e-4)


def test_scoring_restores_training_mode(tiny):
    model, tok = tiny
    model.train()
    try:
        score_prompts(model, tok, ["Question?\nOUTPUT:\n"])
        assert model.training
    finally:
        model.eval()


def test_generation_returns_parsed_strings(tiny):
    model, tok = tiny
    prompts = rendered_prompts(tok, make_rows(1))
    got = generate_prompts(model, tok, prompts, max_new_tokens=5, batch_size=4)
    assert len(got) == len(prompts)
    for g in got:
        assert isinstance(g["raw"], str)
        assert g["pred"] == parse_nomiracl(g["raw"])
        assert g["pred"] in (P, A, INVALID)


class ForceEOS:
    """A logits processor that makes the model end its answer at once."""

    def __init__(self, eos_id: int):
        self.eos_id = eos_id

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.eos_id] = 0.0
        return forced


def test_empty_generation_is_invalid_not_a_crash(tiny, tmp_path):
    from transformers import LogitsProcessorList

    model, tok = tiny
    kwargs = {"logits_processor": LogitsProcessorList([ForceEOS(tok.eos_token_id)])}
    rows = make_rows(1)[:4]
    got = generate_prompts(model, tok, rendered_prompts(tok, rows), 4, 2, generation_kwargs=kwargs)
    assert [g["raw"] for g in got] == [""] * 4
    assert {g["pred"] for g in got} == {INVALID}
    frame = evaluate_probe(
        model,
        tok,
        rows,
        tmp_path / "gen.jsonl",
        "generation",
        progress=False,
        generation_kwargs=kwargs,
    )
    assert frame["invalid"].all() and not frame["correct"].any()
    assert (frame["raw"] == "").all()
    assert frame["logp_first_present"].isna().all()  # no scores in generation mode


# --------------------------------------------------------------------------- evaluate_probe


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_evaluate_probe_writes_complete_records(tiny, tmp_path):
    model, tok = tiny
    rows = make_rows(1)
    out = tmp_path / "preds.jsonl"
    frame = evaluate_probe(model, tok, rows, out, batch_size=4, progress=False)
    assert list(frame.columns) == list(PRED_COLUMNS)
    assert list(frame["item_id"]) == [r["item_id"] for r in rows]  # the order of rows
    validate_predictions(frame)  # usable by xlalign.evaluation.metrics as is
    assert (frame["correct"] == (frame["pred"] == frame["label"])).all()
    assert (frame["mode"] == "scoring").all() and not frame["invalid"].any()
    records = read_jsonl(out)
    assert sorted(r["item_id"] for r in records) == sorted(frame["item_id"])
    assert set(records[0]) == set(PRED_COLUMNS)
    expected = score_prompts(model, tok, rendered_prompts(tok, rows))
    for (_, got), exp in zip(frame.iterrows(), expected, strict=True):
        assert got["pred"] == exp["pred"]
        assert got["logp_full_absent"] == pytest.approx(exp["logp_full_absent"], abs=1e-4)


def test_resume_skips_done_items_without_duplicates(tiny, tmp_path):
    model, tok = tiny
    rows = make_rows(2)
    fresh = evaluate_probe(model, tok, rows, tmp_path / "fresh.jsonl", batch_size=4, progress=False)
    out = tmp_path / "resumed.jsonl"
    half = evaluate_probe(model, tok, rows[: len(rows) // 2], out, batch_size=4, progress=False)
    assert len(read_jsonl(out)) == len(half) == len(rows) // 2
    resumed = evaluate_probe(model, tok, rows, out, batch_size=4, progress=False)
    ids = [r["item_id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == len(rows)
    assert list(resumed["item_id"]) == list(fresh["item_id"])
    assert list(resumed["pred"]) == list(fresh["pred"])
    for col in SCORE_COLUMNS:
        assert resumed[col].to_numpy() == pytest.approx(fresh[col].to_numpy(), abs=1e-4)
    # Nothing left to do: a third call only reads the file.
    again = evaluate_probe(model, tok, rows, out, progress=False)
    pd.testing.assert_frame_equal(again, resumed)
    assert len(read_jsonl(out)) == len(rows)


def test_resume_repairs_an_interrupted_write(tiny, tmp_path):
    model, tok = tiny
    rows = make_rows(1)[:4]
    out = tmp_path / "preds.jsonl"
    evaluate_probe(model, tok, rows[:2], out, progress=False)
    with out.open("a", encoding="utf-8") as fh:
        fh.write('{"item_id": "t0.q1.pos.ja", "pred"')  # killed mid-record
    frame = evaluate_probe(model, tok, rows[:3], out, progress=False)
    assert len(frame) == len(read_jsonl(out)) == 3
    # Killed after a record but before its newline: the record is kept, the next one still fits.
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    frame = evaluate_probe(model, tok, rows, out, progress=False)
    assert len(frame) == len(read_jsonl(out)) == 4


def test_item_set_mismatch_raises(tiny, tmp_path):
    model, tok = tiny
    rows = make_rows(1)
    out = tmp_path / "preds.jsonl"
    evaluate_probe(model, tok, rows[:3], out, progress=False)
    with pytest.raises(ValueError, match="different item set"):
        evaluate_probe(model, tok, rows[3:], out, progress=False)
    with pytest.raises(ValueError, match="cannot resume as 'generation'"):
        evaluate_probe(model, tok, rows, out, mode="generation", progress=False)


def test_bad_arguments_raise(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="rows is empty"):
        evaluate_probe(model, tok, [], tmp_path / "p.jsonl", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_probe(model, tok, make_rows(1), tmp_path / "p.jsonl", batch_size=0, progress=False)
    with pytest.raises(ValueError, match="mode="):
        evaluate_probe(model, tok, make_rows(1), tmp_path / "p.jsonl", mode="vote", progress=False)
    rows = make_rows(1)
    with pytest.raises(ValueError, match="more than once"):
        evaluate_probe(model, tok, rows + rows[:1], tmp_path / "p.jsonl", progress=False)
    assert not (tmp_path / "p.jsonl").exists()


def test_load_eval_model_applies_adapter(tiny, cache_dir, tmp_path):
    from peft import PeftModel, get_peft_model

    from xlalign.config import ModelSection, Profile
    from xlalign.models import lora_config

    profile = Profile(model=ModelSection(name="tiny-random"), cache_dir=str(cache_dir))
    base, tok = load_eval_model(profile)
    assert not base.training
    config = lora_config(profile)
    config.init_lora_weights = False  # random B: the adapter must change the scores
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    base, tok = load_eval_model(profile)  # get_peft_model wrapped the first one in place
    tuned, _ = load_eval_model(profile, tmp_path / "adapter")
    assert isinstance(tuned, PeftModel) and not tuned.training
    prompt = ["Question?\nOUTPUT:\n"]
    before = score_prompts(base, tok, prompt)[0]
    after = score_prompts(tuned, tok, prompt)[0]
    assert after["logp_full_present"] != pytest.approx(before["logp_full_present"], abs=1e-6)
    assert after["logp_full_present"] == pytest.approx(
        slow_scores(tuned, tok, prompt[0])["logp_full_present"], abs=1e-4
    )
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_eval_model(profile, tmp_path / "nowhere")


# --------------------------------------------------------------------------- agreement


def test_agreement_counts_only_valid_generations():
    scoring = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "pred": [P, A, A, P]})
    generation = pd.DataFrame({"item_id": ["d", "c", "b", "a"], "pred": [A, INVALID, A, P]})
    got = agreement(scoring, generation)
    assert got == {
        "n_items": 4,
        "n_generation_valid": 3,
        "n_agree": 2,
        "agreement": pytest.approx(2 / 3),
        "agree_over_all": 0.5,
    }
    with pytest.raises(ValueError, match="different items"):
        agreement(scoring, generation.iloc[:3])
    none_valid = agreement(scoring, generation.assign(pred=INVALID))
    assert none_valid["n_agree"] == 0 and math.isnan(none_valid["agreement"])


# --------------------------------------------------------------------------- kills and faults


def assert_valid_jsonl(path: Path, n: int) -> None:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    ids = [json.loads(line)["item_id"] for line in data.decode("utf-8").splitlines()]
    assert len(ids) == len(set(ids)) == n


def test_read_predictions_drops_only_a_torn_last_line(tmp_path):
    from xlalign.evaluation.predictions import read_predictions

    out = tmp_path / "p.jsonl"
    out.write_text('{"item_id": "a"}\n{"item_id": "b"}\n{"item_id": "c", "pr', encoding="utf-8")
    with pytest.warns(RuntimeWarning, match="dropped 1 half-written last line"):
        assert [r["item_id"] for r in read_predictions(out)] == ["a", "b"]
    assert out.read_text(encoding="utf-8").endswith('"pr')  # reading alone changes nothing
    with pytest.warns(RuntimeWarning, match="2 complete record"):
        read_predictions(out, repair=True)
    assert out.read_text(encoding="utf-8") == '{"item_id": "a"}\n{"item_id": "b"}\n'
    # Not the last line: a corrupt file, not a torn write.
    out.write_text('{"item_id": "a"}\n{"item_id": \n{"item_id": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.jsonl:2 is not a valid prediction record"):
        read_predictions(out)
    out.write_text("", encoding="utf-8")
    assert read_predictions(out) == []


def test_resume_after_a_kill_before_the_first_line(tiny, tmp_path):
    model, tok = tiny
    rows = make_rows(1)
    out = tmp_path / "preds.jsonl"
    out.touch()  # opened for appending, killed before the first batch was flushed
    frame = evaluate_probe(model, tok, rows, out, batch_size=4, progress=False)
    assert len(frame) == len(rows)
    assert_valid_jsonl(out, len(rows))


def test_a_half_written_last_line_is_dropped_with_a_warning(tiny, tmp_path):
    model, tok = tiny
    rows = make_rows(1)
    fresh = evaluate_probe(model, tok, rows, tmp_path / "fresh.jsonl", progress=False)
    out = tmp_path / "preds.jsonl"
    evaluate_probe(model, tok, rows[:2], out, progress=False)
    torn = json.dumps(read_jsonl(tmp_path / "fresh.jsonl")[3])[:40]
    with out.open("a", encoding="utf-8") as fh:
        fh.write(torn)
    with pytest.warns(RuntimeWarning, match="dropped 1 half-written last line"):
        frame = evaluate_probe(model, tok, rows, out, progress=False)
    assert_valid_jsonl(out, len(rows))
    assert list(frame["item_id"]) == list(fresh["item_id"])
    assert list(frame["pred"]) == list(fresh["pred"])


@pytest.fixture
def eval_run(cache_dir, tmp_path):
    from xlalign.config import ModelSection, Profile
    from xlalign.runs import start_run

    profile = Profile(
        name="tiny",
        cache_dir=str(cache_dir),
        model=ModelSection(name="tiny-random", dtype="float32", prompt_format="plain"),
    )
    return profile, start_run(profile, tmp_path / "run", argv=[])


@pytest.mark.parametrize("tail", ["", '{"item_id": "t0.q1.neg.ar", "sample_id": "t0'])
def test_experiments_evaluate_resumes_a_killed_evaluation(tiny, eval_run, tail):
    from xlalign import experiments

    model, tok = tiny
    profile, run = eval_run
    rows = make_rows(1)
    out = run.path / "eval" / "base" / "predictions.jsonl"
    out.parent.mkdir(parents=True)
    if tail:
        evaluate_probe(model, tok, rows[:2], out, progress=False)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(tail)  # "": killed before the first line; else killed mid-line
    with pytest.warns(RuntimeWarning, match="dropped 1") if tail else _no_warning():
        preds = experiments.evaluate(profile, run, "base", rows, model=model, tokenizer=tok)
    assert list(preds["item_id"]) == [r["item_id"] for r in rows]
    assert_valid_jsonl(out, len(rows))
    # The finished file serves a later step that wants a subset of its items.
    again = experiments.evaluate(profile, run, "base", rows[:3], model=None, tokenizer=None)
    wanted = preds[preds["item_id"].isin([r["item_id"] for r in rows[:3]])]
    by_id = ["item_id"]
    pd.testing.assert_frame_equal(
        again.sort_values(by_id).reset_index(drop=True),
        wanted.sort_values(by_id).reset_index(drop=True),
    )


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


KILL_SCRIPT = """
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from xlalign.evaluation.predictions import evaluate_probe

model_dir, rows_file, out = sys.argv[1:4]
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
model.register_forward_hook(lambda *args: time.sleep(0.3))  # slow enough to be killed mid-run
rows = json.loads(open(rows_file, encoding="utf-8").read())
evaluate_probe(model, tok, rows, out, batch_size=2, progress=False)
"""


def test_an_evaluation_killed_mid_run_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    model, tok = tiny
    rows = make_rows(2)
    fresh = evaluate_probe(model, tok, rows, tmp_path / "fresh.jsonl", batch_size=2, progress=False)
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "killed.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tok.name_or_path), str(rows_file), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and b"\n" in out.read_bytes()):
            if proc.poll() is not None:
                pytest.fail(
                    f"the evaluation ended before it was killed: {proc.stderr.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("no prediction line within 240 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    n_done = out.read_bytes().count(b"\n")
    assert 1 <= n_done < len(rows)  # killed mid-run

    resumed = evaluate_probe(model, tok, rows, out, batch_size=2, progress=False)
    assert_valid_jsonl(out, len(rows))
    assert list(resumed["item_id"]) == list(fresh["item_id"])
    assert list(resumed["pred"]) == list(fresh["pred"])
    for col in SCORE_COLUMNS:
        assert resumed[col].to_numpy() == pytest.approx(fresh[col].to_numpy(), abs=1e-4)


def test_nan_weights_are_an_error_not_an_answer(tiny, tmp_path):
    import copy

    from xlalign.evaluation.metrics import invalid_rate_by_language
    from xlalign.evaluation.predictions import NumericalFaultError, read_predictions_frame

    model, tok = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.layers[0].self_attn.q_proj.weight.fill_(float("nan"))
    rows = make_rows(1)
    out = tmp_path / "preds.jsonl"
    n = len(rows)
    with pytest.raises(NumericalFaultError, match=rf"{n} of {n} items .* in {out}"):
        evaluate_probe(broken, tok, rows, out, batch_size=4, progress=False)
    # Everything computed is on disk, marked Invalid -- never "I don't know" by a NaN comparison.
    assert_valid_jsonl(out, n)
    on_disk = read_predictions_frame(out)
    assert (on_disk["pred"] == INVALID).all() and on_disk["invalid"].all()
    assert not on_disk["correct"].any()
    assert on_disk["fault"].str.startswith("nonfinite first-token log-probs").all()
    assert on_disk["logp_first_present"].isna().all()
    assert (invalid_rate_by_language(on_disk) == 100.0).all()
    # A rerun does not launder the faults into answers.
    with pytest.raises(NumericalFaultError):
        evaluate_probe(broken, tok, rows, out, batch_size=4, progress=False)
