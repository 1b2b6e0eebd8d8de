"""Exact, device-independent audit of what one training step keeps in memory, against ta_train.plan_memory.

    nice -n 10 python bench/activation_audit.py                  # the default grid, a markdown table
    nice -n 10 python bench/activation_audit.py --only lora-bf16-sdpa --json --tensors

Two measurements per config, both on CPU, neither timing- nor RSS-based:

1. Saved activations. One forward + loss of the model built as training builds it
   (ta_train.model.build_model on a composed TrainConfig; bf16-mixed runs under
   torch.autocast("cpu", bfloat16) as Lightning's precision plugin does) inside
   `torch.autograd.graph.saved_tensors_hooks`. Every tensor autograd saves is recorded once per distinct
   storage (untyped_storage data_ptr), with its storage's full size. Parameters are excluded (they are
   weights), and so are autocast's cached half copies of trainable weights (2-D, a parameter's shape;
   plan_memory.weight_bytes counts them). Each storage is attributed to the region that first saved it:
   a decoder layer (forward pre-hook/hook), the head (final norm + lm_head), the loss, or `shared` (the
   rotary cos/sin, masks and position ids every layer receives). Under gradient checkpointing the
   checkpoint's own hooks take the layers' tensors; a layer's region then holds what the checkpoint
   keeps, its input.
2. Live bytes over time. A second, fresh forward + loss + backward under
   `torch.profiler.profile(activities=[CPU], profile_memory=True)` with one thread: every allocation
   and free of the CPU allocator is an event with its size; their running sum is the exact live bytes
   above the state before the forward. Gradients exist before this pass (a warm-up step leaves them,
   as in gradient accumulation), so backward adds only its transients. Reported: live bytes at the end
   of the forward and of the loss, the peak and its phase (forward / loss / backward), and the loss
   buffers = the peak minus the saved activations and weight casts alive then.

Predicted = plan_activations.layer_activation_bytes_per_token * tokens + score_bytes_per_sequence per
layer, head_bytes_per_token, activation_bytes for the whole forward, logits_bytes for the loss
buffers. Shapes are small (hidden 256-512, 2 layers, 2 x 320 tokens), so a config runs in seconds.
"""
from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import platform
import sys
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# name -> (peft, precision, attention, checkpointing, dropout, targets, hidden, heads, kv_heads, intermediate)
_ALL = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
CONFIGS: dict[str, tuple] = {}
for _prec, _p in (("fp32", "32-true"), ("bf16", "bf16-mixed")):
    for _attn in ("sdpa", "eager"):
        CONFIGS[f"full-{_prec}-{_attn}"] = ("none", _p, _attn, False, 0.0, None, 512, 8, 4, 1408)
        CONFIGS[f"lora-{_prec}-{_attn}"] = ("lora", _p, _attn, False, 0.05, None, 512, 8, 4, 1408)
    CONFIGS[f"lora-{_prec}-nodrop"] = ("lora", _p, "sdpa", False, 0.0, None, 512, 8, 4, 1408)
    CONFIGS[f"lora-{_prec}-all"] = ("lora", _p, "sdpa", False, 0.05, _ALL, 512, 8, 4, 1408)
    CONFIGS[f"lora-{_prec}-all-nodrop"] = ("lora", _p, "sdpa", False, 0.0, _ALL, 512, 8, 4, 1408)
    CONFIGS[f"full-{_prec}-ckpt"] = ("none", _p, "sdpa", True, 0.0, None, 512, 8, 4, 1408)
    CONFIGS[f"lora-{_prec}-ckpt"] = ("lora", _p, "sdpa", True, 0.05, None, 512, 8, 4, 1408)
    CONFIGS[f"lora-{_prec}-h256-mha"] = ("lora", _p, "sdpa", False, 0.05, None, 256, 4, 4, 704)
LAYERS, SEQ, MICRO, VOCAB, RANK = 2, 320, 2, 8192, 16


def overrides(name: str, seq: int = SEQ, micro: int = MICRO) -> list[str]:
    peft, precision, attn, ckpt, dropout, targets, h, heads, kv, f = CONFIGS[name]
    head_dim = h // heads
    n = VOCAB * h + LAYERS * (2 * h * h + 2 * h * kv * head_dim + 3 * h * f + 2 * h) + h
    arch = dict(n_params=n, n_layers=LAYERS, hidden_size=h, n_heads=heads, n_kv_heads=kv, intermediate_size=f,
                vocab_size=VOCAB, max_positions=2048, tie_embeddings="true")
    return [
        "model=tiny", "+hw=cpu", f"peft={peft}", f"precision={precision}", f"peft.r={RANK}", f"peft.dropout={dropout}",
        *([f"peft.target_modules={targets}"] if targets else []), "model.init_std=0.02",
        f"model.attn_implementation={attn}", f"data.max_seq_len={seq}", f"batch.micro_size={micro}",
        f"batch.global_size={micro}", f"gradient_checkpointing={str(ckpt).lower()}", "run_dir=/tmp/ta-activation-audit",
        *(f"model.arch.{k}={v}" for k, v in arch.items()),
    ]


def compose_cfg(overrides_: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ta_train.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("train", overrides=overrides_))


def _decoder_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


class SavedTensorAudit:
    """Distinct storages autograd saves, by region; parameters and autocast weight copies excluded."""

    def __init__(self, model):
        params = list(model.parameters())
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.param_shapes = {tuple(p.shape) for p in params if p.dim() == 2} | {tuple(p.shape)[::-1] for p in params if p.dim() == 2}
        self.region = "embed"
        self.seen: dict[int, tuple[str, int]] = {}  # storage ptr -> (region, bytes)
        self.tensors: list[tuple[str, tuple, str, int]] = []  # (region, shape, dtype, bytes) first sightings
        self.shared: set[int] = set()
        self.shared_refs: list = []
        self.weight_copies = 0

    def pack(self, t):
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return t
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self.param_ptrs or ptr in self.seen:
            return t
        region = "shared" if ptr in self.shared else self.region
        if t.dim() == 2 and tuple(t.shape) in self.param_shapes and t.dtype in (torch.bfloat16, torch.float16):
            self.weight_copies += st.nbytes()
            region = "weight_copy"
        self.seen[ptr] = (region, st.nbytes())
        self.tensors.append((region, tuple(t.shape), str(t.dtype).replace("torch.", ""), st.nbytes()))
        return t

    def by_region(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for region, nbytes in self.seen.values():
            out[region] += nbytes
        return dict(out)

    @contextmanager
    def regions(self, model):
        """Label saved tensors by decoder layer; tensors a layer receives besides hidden_states are `shared`."""
        import torch

        handles = []
        layers = _decoder_layers(model)

        def pre(i):
            def hook(module, args, kwargs):
                self.region = f"layer{i}"
                for v in list(args[1:]) + list(kwargs.values()):
                    for x in v if isinstance(v, (tuple, list)) else (v,):
                        if isinstance(x, torch.Tensor):  # held, so a freed address cannot come back as "shared"
                            self.shared.add(x.untyped_storage().data_ptr())
                            self.shared_refs.append(x)
            return hook

        def post(module, args, kwargs, out):
            self.region = "head"

        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(post, with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def make_batch(cfg, prompt: int, pad: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    micro, seq = cfg.batch.micro_size, cfg.data.max_seq_len
    ids = torch.randint(0, cfg.model.arch.vocab_size, (micro, seq), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100  # a masked prompt, so the loss takes its trained-rows path
    mask = torch.ones_like(ids)
    if pad:  # the last row is padded, as a collated batch of unequal rows is: attention gets a real mask
        mask[-1, -pad:] = 0
        labels[-1, -pad:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _autocast(cfg):
    import torch

    if cfg.precision.name == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if cfg.precision.name != "32-true":
        raise ValueError(f"the audit runs 32-true and bf16-mixed on CPU, not {cfg.precision.name}")
    return nullcontext()


def live_bytes_timeline(prof) -> tuple[list[tuple[int, int]], dict[str, tuple[int, int]]]:
    """((time ns, live bytes) after every CPU allocator event, {record_function name: (start, end)})."""
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and e.device_type().name == "CPU")
    spans = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name().startswith("audit::")}
    live, out = 0, []
    for t, n in mem:
        live += n
        out.append((t, live))
    return out, spans


def audit(cfg, *, prompt: int = 8, pad: int = 16, profiled: bool = True, keep_tensors: bool = False) -> dict:
    """Saved bytes by region and the live-bytes profile of one step of `cfg` (see the module docstring).

    prompt: masked label positions at the start of each row; pad: padded positions at the end of
    the last row (0: no attention mask reaches the kernels); profiled=False skips measurement 2.
    """
    import torch
    from ta_train.losses import sum_token_cross_entropy
    from ta_train.model import build_model
    from ta_train.plan import _setup
    from ta_train.plan_activations import (
        _resid_bytes, activation_bytes, head_bytes_per_token, layer_activation_bytes_per_token, logits_bytes,
        score_bytes_per_sequence,
    )

    s = _setup(cfg, None, None)
    tokens = s.micro_batch * s.seq_len
    a = cfg.model.arch
    if tokens in (a.hidden_size, a.intermediate_size, a.vocab_size, a.n_kv_heads * a.hidden_size // a.n_heads):
        raise ValueError(f"micro x seq = {tokens} equals a weight dimension: activations and weights would be confused")
    torch.set_num_threads(1)  # one allocating thread: the event order is the allocation order
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = make_batch(cfg, prompt, pad)
    eps = cfg.objective.label_smoothing

    def forward_loss():
        with _autocast(cfg):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            loss_sum, n = sum_token_cross_entropy(logits, batch["labels"], eps)
        return loss_sum / n

    # warm-up step: kernels, lazy buffers, and .grad of every trainable parameter (kept as in accumulation)
    forward_loss().backward()

    rec = SavedTensorAudit(model)
    with rec.regions(model), torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t):
        with _autocast(cfg):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            rec.region = "loss"
            loss_sum, n = sum_token_cross_entropy(logits, batch["labels"], eps)
        del logits
    regions = rec.by_region()
    loss_sum.backward()
    del loss_sum, n

    layers = [regions.get(f"layer{i}", 0) for i in range(a.n_layers)]
    out = {
        "tokens": tokens, "hidden": a.hidden_size, "precision": cfg.precision.name, "method": s.method,
        "attn": s.attn, "ckpt": s.gradient_checkpointing, "dropout": s.lora_dropout,
        "targets": list(s.targets) if s.method != "none" else [],
        # under checkpointing a layer's region holds only what the checkpoint keeps: its input
        "saved_layer_bytes": layers, "saved_head_bytes": regions.get("head", 0), "saved_loss_bytes": regions.get("loss", 0),
        "saved_shared_bytes": regions.get("shared", 0) + regions.get("embed", 0), "weight_copy_bytes": rec.weight_copies,
        "plan_layer_bytes": (_resid_bytes(s) * a.hidden_size * tokens if s.gradient_checkpointing else
                             layer_activation_bytes_per_token(a, s) * tokens + score_bytes_per_sequence(a, s) * s.micro_batch),
        "plan_head_bytes": head_bytes_per_token(a, s) * tokens,
        "plan_activation_bytes": activation_bytes(a, s), "plan_logits_bytes": logits_bytes(a, s),
    }
    if keep_tensors:
        last = f"layer{a.n_layers - 1}"
        out["tensors"] = [t for t in rec.tensors if t[0] in (last, "head", "loss", "shared", "embed", "weight_copy")]
    if profiled:
        out |= profile_step(model, cfg, batch, eps)
        # what the loss and its backward hold on top of the saved activations, at the step's peak
        kept = sum(layers) + out["saved_head_bytes"] + out["saved_shared_bytes"] + rec.weight_copies
        out["loss_buffer_bytes"] = out["peak_bytes"] - kept
    return out


def profile_step(model, cfg, batch, eps: float) -> dict:
    """Live CPU bytes over a forward + loss + backward, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from ta_train.losses import sum_token_cross_entropy

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("audit::forward"):
            with _autocast(cfg):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        with record_function("audit::loss"):
            with _autocast(cfg):
                loss_sum, n = sum_token_cross_entropy(logits, batch["labels"], eps)
                loss = loss_sum / n
            del logits, loss_sum
        with record_function("audit::backward"):
            loss.backward()
        del loss, n
    timeline, spans = live_bytes_timeline(prof)

    times = [t for t, _ in timeline]

    def at(t_ns: int) -> int:  # live bytes after the last event at or before t_ns
        i = bisect.bisect_right(times, t_ns)
        return timeline[i - 1][1] if i else 0

    def peak_in(name: str) -> int:
        s, e = spans[name]
        return max([b for t, b in timeline if s <= t <= e] or [0])

    peaks = {k: peak_in(f"audit::{k}") for k in ("forward", "loss", "backward")}
    return {
        "live_after_forward": at(spans["audit::forward"][1]), "live_after_loss": at(spans["audit::loss"][1]),
        "peak_bytes": max(peaks.values()), "phase_peaks": peaks, "peak_phase": max(peaks, key=peaks.get),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run these configs (default: all)")
    ap.add_argument("--seq", type=int, default=SEQ)
    ap.add_argument("--micro", type=int, default=MICRO)
    ap.add_argument("--prompt", type=int, default=8, help="masked label positions at the start of each row")
    ap.add_argument("--pad", type=int, default=16, help="padding at the end of the last row (0: no attention mask)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per config")
    ap.add_argument("--tensors", action="store_true", help="list layer 0's, the head's and the loss's saved tensors")
    args = ap.parse_args()
    mib = 2**20
    rows = []
    for name in args.only or list(CONFIGS):
        cfg = compose_cfg(overrides(name, args.seq, args.micro))
        r = audit(cfg, prompt=args.prompt, pad=args.pad, keep_tensors=args.tensors) | {"config": name}
        rows.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
    import torch

    def err(plan: float, got: float) -> str:
        return f"{(plan - got) / got * 100:+.1f}%" if got else "-"

    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"{LAYERS} layers, {args.micro} x {args.seq} tokens ({args.prompt} masked prompt tokens per row, "
          f"{args.pad} padding in the last), vocab {VOCAB}, LoRA r={RANK}; MiB; layer = the last (steady-state) "
          "layer, its checkpointed input under ckpt")
    print("| config | saved/layer | plan | err | head saved | plan | loss buffers at peak | plan logits | err "
          "| peak over step (phase), weight copies excluded | plan act+logits | err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lay, peak = r["saved_layer_bytes"][-1], r["peak_bytes"] - r["weight_copy_bytes"]
        total = r["plan_activation_bytes"] + r["plan_logits_bytes"]
        print(f"| {r['config']} | {lay / mib:.2f} | {r['plan_layer_bytes'] / mib:.2f} | {err(r['plan_layer_bytes'], lay)} "
              f"| {r['saved_head_bytes'] / mib:.2f} | {r['plan_head_bytes'] / mib:.2f} "
              f"| {r['loss_buffer_bytes'] / mib:.2f} | {r['plan_logits_bytes'] / mib:.2f} | {err(r['plan_logits_bytes'], r['loss_buffer_bytes'])} "
              f"| {peak / mib:.2f} ({r['peak_phase']}) | {total / mib:.2f} | {err(total, peak)} |")


if __name__ == "__main__":
    main()
