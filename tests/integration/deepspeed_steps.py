"""Real DeepSpeed steps on CPU for tests/integration/test_deepspeed_cpu.py (run in its own process).

    python -m tests.integration.deepspeed_steps OUT_DIR

Lightning refuses DeepSpeed on CPU, but raw `deepspeed.initialize` runs here with the gloo backend
(DeepSpeedCPUAdam compiles itself on first use, cached under ~/.cache/torch_extensions). A single
process (world size 1) initializes torch.distributed, so this runs apart from the pytest process.
For each of SCENARIOS, with the tiny random Llama + LoRA and the run's own builders (config -> plan
-> apply_plan -> deepspeed_config, build_optimizer, the SFT loss), it does one optimizer step and
prints one JSON object: loss, the optimizer and its param groups' fused flags, the engine's global
grad norm and a naive total norm of the same gradients computed without DeepSpeed, which parameters
changed (their new values go to OUT_DIR/<scenario>.after.pt), the fused flags after zero2_fused
resumes zero2's checkpoint (raw, then with keep_built_fused), and for ZeRO-3 the shapes saved by the
gather-then-save path next to those of a plain save.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from tests.conftest import FAST, compose

SCENARIOS = {
    "zero2_offload": ["strategy=deepspeed_zero2", "strategy.offload_optimizer=true"],
    "zero3": ["strategy=deepspeed_zero3"],
    # the client torch AdamW stepped by the engine on its fp32 partitions, multi-tensor and fused
    "zero2": ["strategy=deepspeed_zero2"],
    "zero2_fused": ["strategy=deepspeed_zero2", "optim.fused=true"],
    "zero3_fused": ["strategy=deepspeed_zero3", "optim.fused=true"],
    # perf.compile under ZeRO-2 (aot_eager: the traced graph without C++ compilation)
    "zero2_offload_compile": ["strategy=deepspeed_zero2", "strategy.offload_optimizer=true", "perf.compile=true",
                              "perf.compile_backend=aot_eager"],
}


def typed_cfg(out: Path, overrides: list[str]):
    cfg, OmegaConf = compose([*FAST, f"run_dir={out}", "batch.global_size=2", "batch.micro_size=2", *overrides])
    return OmegaConf.to_object(cfg)


def batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 32), generator=g)
    labels = ids.clone()
    labels[:, :8] = -100  # an untrained prompt
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def mean_loss(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    from ta_train.losses import sum_token_cross_entropy

    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
    loss_sum, n = sum_token_cross_entropy(logits, b["labels"], 0.05)
    return loss_sum / n


def naive_grad_norm(model, b: dict[str, torch.Tensor]) -> float:
    """sqrt(sum over trainable parameters of ||grad||^2), plain autograd, no DeepSpeed."""
    torch.manual_seed(1)  # the same LoRA dropout masks as the engine's forward
    mean_loss(model, b).backward()
    sq = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.requires_grad)
    return sq**0.5


def run_scenario(name: str, out: Path) -> dict:
    import deepspeed

    from ta_train.model import build_model, load_tokenizer, save_hf
    from ta_train.optim import build_optimizer, keep_built_fused
    from ta_train.plan import apply_plan, make_plan
    from ta_train.zero import deepspeed_config, engine_grad_norm, gathered_state_dict, is_zero3_partitioned

    cfg = typed_cfg(out / name, SCENARIOS[name])
    cfg = apply_plan(cfg, make_plan(cfg, strict=True))  # as fit() does: optim.fused as the strategy allows
    ds = deepspeed_config(make_plan(cfg, strict=True), cfg)
    model = build_model(cfg)
    b = batch(cfg.model.arch.vocab_size)
    naive = naive_grad_norm(copy.deepcopy(model), b)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer, _ = build_optimizer(model, cfg.optim, total_steps=10, offload=cfg.strategy.offload_optimizer)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    torch.manual_seed(1)
    loss = mean_loss(engine, b)
    engine.backward(loss)
    engine.step()
    result = {
        "loss": float(loss.detach()),
        "optimizer": type(optimizer).__name__,
        "fused": [bool(g.get("fused")) for g in optimizer.param_groups],
        "engine_grad_norm": engine_grad_norm(SimpleNamespace(strategy=SimpleNamespace(model=engine))),
        "naive_grad_norm": naive,
    }
    after = gathered_state_dict(engine.module)
    result["changed"] = {n: not torch.equal(before[n], after[n]) for n in before}
    torch.save({n: after[n] for n in before}, out / f"{name}.after.pt")
    if name == "zero2":  # a checkpoint of the multi-tensor setting, resumed by zero2_fused below
        engine.save_checkpoint(str(out / "zero2_ckpt"))
    if name == "zero2_fused":
        engine.load_checkpoint(str(out / "zero2_ckpt"))
        result["fused_after_resume"] = [bool(g.get("fused")) for g in optimizer.param_groups]
        keep_built_fused([engine.optimizer])  # what CausalLMModule.on_train_start does
        result["fused_after_keep"] = [bool(g.get("fused")) for g in optimizer.param_groups]
    if name == "zero3":
        params = dict(engine.module.named_parameters())
        result["partitioned"] = sum(is_zero3_partitioned(p) for p in params.values())
        result["local_shapes"] = sorted({tuple(p.shape) for p in params.values() if p.requires_grad})
        tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
        save_hf(engine.module, tokenizer, out / "adapter", state_dict=after)
        engine.module.save_pretrained(out / "adapter_plain")  # what saving without the gather gives
        result["expected"] = {n: list(t.shape) for n, t in after.items()}
        torch.save(after, out / "gathered.pt")
    return result


def main() -> None:
    out = Path(sys.argv[1])
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": os.environ.get("MASTER_PORT", "29533"),
                       "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    results = {name: run_scenario(name, out) for name in SCENARIOS}
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
