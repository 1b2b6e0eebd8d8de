"""CUDA paths: bf16 autocast training, FlashAttention-2 selection, QLoRA with bitsandbytes."""
from __future__ import annotations

import importlib.util

import pytest

from ta_train.train import fit

pytestmark = pytest.mark.gpu

GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_steps=3", "trainer.limit_val_batches=0"]


def test_bf16_mixed_lora_trains_on_gpu(make_cfg):
    import lightning as L

    seen = []

    class Where(L.Callback):  # Lightning moves the module back to the CPU when fit ends
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(next(pl_module.model.parameters()).device.type)

    cfg = make_cfg(*GPU, "precision=bf16-mixed")
    trainer, module, _ = fit(cfg, extra_callbacks=[Where()])
    assert trainer.global_step == 3 and set(seen) == {"cuda"}


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed")
def test_auto_attention_picks_flash_attention_2(make_cfg):
    cfg = make_cfg(*GPU, "precision=bf16-mixed", "model.attn_implementation=auto", "+hw=a100", "batch.global_size=8")
    trainer, module, _ = fit(cfg)
    assert module.model.config._attn_implementation == "flash_attention_2"


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_qlora_loads_the_base_in_4bit_and_trains(make_cfg, tmp_path):
    import torch

    from ta_train.model import random_llama

    base = make_cfg()
    model_dir = tmp_path / "tiny-base"
    random_llama(base.model, torch.float32, "sdpa").save_pretrained(model_dir)
    from ta_train.model import load_tokenizer

    load_tokenizer(base.model, base.cache_dir).save_pretrained(model_dir)
    cfg = make_cfg(*GPU, "peft=qlora", "precision=bf16-mixed", "model.random_init=false", "model.provider=null",
                   f"model.name_or_path={model_dir}")
    trainer, module, _ = fit(cfg)
    kinds = {type(m).__name__ for m in module.model.modules()}
    assert "Linear4bit" in kinds and trainer.global_step == 3


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_resumes_a_checkpoint_of_the_other_fused_setting_on_cuda(fused, tmp_path):
    # torch's load_state_dict leaves a multi-tensor checkpoint's step counts on the CPU (Lightning does
    # not move "step" either): a fused AdamW then failed in torch._fused_adamw_ ("Expected all tensors to
    # be on the same device", pytorch#104767). keep_built_fused puts them where the built step reads them.
    import torch

    from ta_train.optim import keep_built_fused

    model = torch.nn.Linear(64, 32).cuda()
    other = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=(not fused) or None)
    model(torch.randn(8, 64, device="cuda")).sum().backward()
    other.step()
    torch.save(other.state_dict(), tmp_path / "opt.pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None)
    optimizer.load_state_dict(torch.load(tmp_path / "opt.pt", map_location="cpu"))  # as Lightning restores
    keep_built_fused([optimizer])
    home = "cuda" if fused else "cpu"
    assert all(optimizer.state[p]["step"].device.type == home for p in model.parameters())
    optimizer.step()
    torch.cuda.synchronize()
    assert all(float(optimizer.state[p]["step"]) == 2.0 for p in model.parameters())
