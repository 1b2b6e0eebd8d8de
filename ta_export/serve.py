"""OpenAI-compatible serving commands: vLLM on GPUs (merged model, or base + LoRA), llama.cpp on a GGUF.

The vLLM command is sized from a hardware profile (`conf/hw/NAME.yaml`, the ones training uses):
tensor parallelism over its GPUs, the dtype of its precision group, and how many sequences fit
the KV cache left after the weights (arithmetic in `max_num_seqs`). Both servers bind 127.0.0.1
unless told otherwise.
"""
from __future__ import annotations

import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ta_export.runs import ExportError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
_DTYPE = {"bf16-mixed": "bfloat16", "16-mixed": "float16", "32-true": "float32"}
_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ServeHardware:
    """What serving needs from a hw profile."""

    name: str
    gpus: int
    memory_gib: float  # per GPU
    dtype: str  # bfloat16 | float16 | float32, from the profile's precision group


def load_hw(name: str, conf_dir: Path = CONF_DIR) -> ServeHardware:
    """Read `conf/hw/NAME.yaml`: its hw block and the precision group it selects."""
    from omegaconf import OmegaConf

    path = conf_dir / "hw" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "hw").glob("*.yaml"))
        raise ExportError(f"hw={name}: no {path}; known profiles: {', '.join(known)}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    precision = "32-true"
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict) and "override /precision" in entry:
            precision = entry["override /precision"]
    hw = raw.get("hw") or {}
    for key in ("devices", "memory_gib"):
        if key not in hw:
            raise ExportError(f"{path}: hw.{key} is missing")
    return ServeHardware(name=name, gpus=int(hw["devices"]), memory_gib=float(hw["memory_gib"]), dtype=_DTYPE[precision])


@dataclass(frozen=True)
class ModelShape:
    """Sizes from the run's model config (`model.arch`)."""

    n_params: int
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int


def tensor_parallel_size(gpus: int, shape: ModelShape) -> int:
    """The most GPUs <= `gpus` that split both the query and the KV heads evenly (vLLM requires it)."""
    return max(d for d in range(1, max(gpus, 1) + 1) if shape.n_heads % d == 0 and shape.n_kv_heads % d == 0)


def max_num_seqs(hw: ServeHardware, shape: ModelShape, max_model_len: int, tp: int, utilization: float = 0.9, cap: int = 256) -> int:
    """Sequences of max_model_len tokens whose KV cache fits next to the weights, between 1 and `cap`.

    KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes;
    budget = tp x memory x utilization - weights - 1 GiB per GPU for activations and CUDA graphs.
    """
    dtype_bytes = _BYTES[hw.dtype]
    kv_per_token = 2 * shape.n_layers * shape.n_kv_heads * (shape.hidden_size // shape.n_heads) * dtype_bytes
    budget = tp * (hw.memory_gib * utilization - 1.0) * 2**30 - shape.n_params * dtype_bytes
    if budget <= 0:
        raise ExportError(
            f"hw={hw.name}: {shape.n_params / 1e9:.1f} B parameters in {hw.dtype} do not fit "
            f"{tp} x {hw.memory_gib} GiB at {utilization:.0%} utilization"
        )
    return max(1, min(cap, math.floor(budget / (kv_per_token * max_model_len))))


@dataclass(frozen=True)
class VllmRequest:
    model: str  # merged HF folder, or the base model when `adapter` is set
    served_name: str
    max_model_len: int
    shape: ModelShape
    hw: ServeHardware
    adapter: Optional[str] = None  # PEFT folder served with --enable-lora instead of a merged model
    lora_rank: int = 16
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    gpu_memory_utilization: float = 0.9
    swap_space_gib: int = 4  # CPU swap for preempted sequences, per GPU


def vllm_command(req: VllmRequest) -> list[str]:
    """`python -m vllm.entrypoints.openai.api_server ...` for the request (nothing is started)."""
    tp = tensor_parallel_size(req.hw.gpus, req.shape)
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", req.model,
        "--served-model-name", req.served_name,
        "--host", req.host, "--port", str(req.port),
        "--tensor-parallel-size", str(tp),
        "--max-model-len", str(req.max_model_len),
        "--dtype", req.hw.dtype,
        "--gpu-memory-utilization", str(req.gpu_memory_utilization),
        "--max-num-seqs", str(max_num_seqs(req.hw, req.shape, req.max_model_len, tp, req.gpu_memory_utilization)),
        "--swap-space", str(req.swap_space_gib),
    ]  # fmt: skip
    if req.adapter:
        # clients ask for the adapter by this name; the base stays addressable as served_name-base
        cmd[cmd.index("--served-model-name") + 1] = f"{req.served_name}-base"
        cmd += ["--enable-lora", "--lora-modules", f"{req.served_name}={req.adapter}", "--max-lora-rank", str(_lora_rank_slot(req.lora_rank))]
    if req.api_key:
        cmd += ["--api-key", req.api_key]
    return cmd


def _lora_rank_slot(r: int) -> int:
    """vLLM accepts --max-lora-rank from a fixed list; the smallest one >= r."""
    for slot in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= slot:
            return slot
    raise ExportError(f"LoRA rank {r} is above vLLM's largest --max-lora-rank (512)")


@dataclass(frozen=True)
class LlamaCppRequest:
    gguf: str
    served_name: str
    n_ctx: int
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    n_gpu_layers: int = 0  # -1 offloads every layer when llama-cpp-python was built with CUDA/Metal
    chat_format: Optional[str] = None  # None: the chat template embedded in the GGUF (what training used)


def llamacpp_command(req: LlamaCppRequest) -> list[str]:
    """`python -m llama_cpp.server ...` for the request (nothing is started)."""
    if not Path(req.gguf).is_file():
        raise ExportError(f"gguf={req.gguf}: no such file (export with formats=[gguf] first)")
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", req.gguf,
        "--model_alias", req.served_name,
        "--host", req.host, "--port", str(req.port),
        "--n_ctx", str(req.n_ctx),
        "--n_gpu_layers", str(req.n_gpu_layers),
    ]  # fmt: skip
    if req.chat_format:
        cmd += ["--chat_format", req.chat_format]
    if req.api_key:
        cmd += ["--api_key", req.api_key]
    return cmd


def printable(cmd: list[str], api_key: Optional[str] = None) -> str:
    """The command as one shell line, with the API key masked."""
    return shlex.join(["***" if api_key and part == api_key else part for part in cmd])


def start(cmd: list[str], dry_run: bool, api_key: Optional[str] = None) -> int:
    """Print the command; unless dry_run, run it in the foreground until it exits (Ctrl-C stops it)."""
    print(printable(cmd, api_key), flush=True)
    if dry_run:
        return 0
    module = cmd[2]
    try:
        __import__(module.split(".")[0])
    except ImportError:
        extra = "pip install vllm (GPU box)" if module.startswith("vllm") else "pip install '.[export]'"
        raise ExportError(f"{module} is not installed here: {extra}; dry_run=true prints the command only") from None
    return subprocess.call(cmd)


def shape_of(cfg) -> ModelShape:  # cfg: ta_train.config.TrainConfig
    a = cfg.model.arch
    return ModelShape(n_params=a.n_params, n_layers=a.n_layers, hidden_size=a.hidden_size, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads)


def serve_command(opts: dict[str, str], output: Path) -> tuple[list[str], Optional[str]]:
    """The server command for `python -m ta_export serve KEY=VALUE ...` (see the README); returns (cmd, api_key).

    Model source: `version=` (default: `current` under output) for its merged/ folder or GGUF, or
    `run=RUN_DIR adapter=true` (vLLM) for the base with the run's LoRA adapter, unmerged.
    """
    from ta_export.registry import current, versions
    from ta_export.runs import load_run

    engine = opts.get("engine")
    if engine not in ("vllm", "llamacpp"):
        raise ExportError(f"engine={engine!r}: expected engine=vllm or engine=llamacpp")
    api_key = opts.get("api_key") or None
    host, port = opts.get("host", "127.0.0.1"), int(opts.get("port", "8000"))
    lora = opts.get("adapter", "false").lower() == "true"
    version_dir: Optional[Path] = None
    if "version" in opts or "run" not in opts:
        vid = opts.get("version") or current(output)
        found = {v.id: v for v in versions(output) if v.complete}
        if vid not in found:
            raise ExportError(f"version={vid!r}: no complete export in {output} (export a run first, or pass run=RUN adapter=true)")
        version_dir = found[vid].path
        run = load_run(found[vid].manifest["run_dir"])  # type: ignore[index]
    if "run" in opts:
        run = load_run(opts["run"])
    name = opts.get("name") or f"ta-{run.cfg.model.name}".replace("_", "-")
    max_len = int(opts.get("max_model_len", run.cfg.data.max_seq_len))
    if engine == "llamacpp":
        gguf = opts.get("gguf") or str(_pick_gguf(version_dir, opts.get("quant")))
        req = LlamaCppRequest(gguf=gguf, served_name=name, n_ctx=max_len, host=host, port=port, api_key=api_key,
                              n_gpu_layers=int(opts.get("n_gpu_layers", "0")), chat_format=opts.get("chat_format"))
        return llamacpp_command(req), api_key
    hw_name = opts.get("hw") or (run.cfg.hw.name if run.cfg.hw else None)
    if not hw_name:
        raise ExportError("engine=vllm needs a GPU hw profile: hw=NAME (one of conf/hw/*.yaml, e.g. hw=a100)")
    hw = load_hw(hw_name)
    if lora:
        if run.adapter_dir is None:
            raise ExportError(f"adapter=true: run={run.path} has no adapter/ (a full fine-tune); serve its export instead")
        from ta_export.merge import base_source

        model, adapter = base_source(run), str(run.adapter_dir)
    else:
        if version_dir is None:
            raise ExportError("engine=vllm without adapter=true serves an export's merged/ folder: pass version=V, not run=")
        model, adapter = str(version_dir / "merged"), None
    req = VllmRequest(model=model, served_name=name, max_model_len=max_len, shape=shape_of(run.cfg), hw=hw, adapter=adapter,
                      lora_rank=run.cfg.peft.r, host=host, port=port, api_key=api_key,
                      swap_space_gib=int(opts.get("swap_space", "4")))
    return vllm_command(req), api_key


def _pick_gguf(version_dir: Optional[Path], quant: Optional[str]) -> Path:
    files = sorted(version_dir.glob("*.gguf")) if version_dir else []
    if quant:
        files = [f for f in files if f.name.endswith(f"-{quant}.gguf")]
    if not files:
        what = f"{quant} GGUF" if quant else "GGUF"
        raise ExportError(f"no {what} file in {version_dir or 'the export'}: export with formats=[merged,gguf] (gguf.quant=[...])")
    from ta_export.export import ollama_gguf

    return ollama_gguf(files)
