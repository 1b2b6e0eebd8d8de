"""DeepSpeed through Lightning on one CUDA device: the run writes deepspeed.json from its plan and
ZeRO-3 + LoRA saves an adapter of full tensors (gathered), never Size([0]) placeholders."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"),
]

GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_steps=2", "trainer.limit_val_batches=0",
       "precision=bf16-mixed", "batch.global_size=4", "batch.micro_size=2"]


@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_lora_run_saves_full_adapter(make_cfg, strategy):
    from safetensors.torch import load_file

    from ta_train.train import run

    cfg = make_cfg(*GPU, f"strategy={strategy}")
    run(cfg)
    ds = json.loads((Path(cfg.run_dir) / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == int(strategy[-1]) and ds["bf16"] == {"enabled": True}
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 2
    saved = load_file(Path(cfg.run_dir) / "adapter" / "adapter_model.safetensors")
    assert len(saved) == 16 and all(min(t.shape) > 0 for t in saved.values())


@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_fused_adamw_steps_the_zero_partitions_through_lightning(make_cfg, strategy, tmp_path):
    # optim.fused under ZeRO without offload: Lightning's DeepSpeed path steps the engine, which calls
    # torch.optim.AdamW(fused=True) on its fp32 CUDA partitions; the run trains and its loss falls
    import lightning as L
    import torch

    from tests.integration.test_live_metrics import columns
    from ta_train.plan import apply_plan, make_plan
    from ta_train.train import fit

    class Stepped(L.Callback):  # what the engine stepped: its client optimizer and that one's state
        def on_train_end(self, trainer, pl_module):
            base = trainer.optimizers[0].optimizer  # DeepSpeed's ZeRO optimizer wraps torch's
            self.fused = type(base) is torch.optim.AdamW and base.defaults["fused"] is True
            self.state = [(p.device.type, p.dtype, st["step"].device.type, float(st["step"])) for p, st in base.state.items()]

    cfg = make_cfg(*GPU, f"strategy={strategy}", "optim.fused=true", "peft=none", "trainer.max_steps=6",
                   "optim.lr=1e-3", "optim.warmup_ratio=0", "trainer.log_every_n_steps=1")
    cfg = apply_plan(cfg, make_plan(cfg))  # as run() does
    assert cfg.optim.fused
    stepped = Stepped()
    fit(cfg, [stepped])
    assert stepped.fused and stepped.state  # the fused step ran on the fp32 partitions, on the GPU
    assert all(s == ("cuda", torch.float32, "cuda", 6.0) for s in stepped.state), stepped.state
    losses = columns(Path(cfg.run_dir))["train/loss"]
    assert len(losses) >= 4 and losses[-1] < losses[0]
