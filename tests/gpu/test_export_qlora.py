"""QLoRA export on CUDA: the base is reloaded unquantized (bf16) and the adapter merged there, not into nf4."""
from __future__ import annotations

import importlib.util

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")]

GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_steps=10", "trainer.limit_val_batches=0", "optim.lr=1e-2"]


def test_qlora_adapter_merges_into_an_unquantized_bf16_base(make_cfg, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ta_export.merge import load_run_tokenizer, load_unmerged, merge_dtype, merge_run
    from ta_export.runs import load_run
    from ta_train.model import load_tokenizer, random_llama
    from ta_train.train import fit, save_outputs

    base = make_cfg()
    model_dir = tmp_path / "tiny-base"
    random_llama(base.model, torch.float32, "sdpa").save_pretrained(model_dir)
    load_tokenizer(base.model, base.cache_dir).save_pretrained(model_dir)
    cfg = make_cfg(*GPU, "peft=qlora", "precision=bf16-mixed", "model.random_init=false", "model.provider=null", f"model.name_or_path={model_dir}")
    trainer, module, tokenizer = fit(cfg)
    assert "Linear4bit" in {type(m).__name__ for m in module.model.modules()}
    save_outputs(cfg, trainer, module, tokenizer)

    run = load_run(cfg.run_dir)
    assert merge_dtype(run) == "bfloat16"
    merged_dir = merge_run(run, tmp_path / "merged", progress=False)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.dtype == torch.bfloat16 and getattr(merged.config, "quantization_config", None) is None
    assert not {"Linear4bit", "Params4bit"} & {type(m).__name__ for m in merged.modules()}

    tok = load_run_tokenizer(run)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "What is a loss?"}], add_generation_prompt=True, return_dict=False)])
    reference = load_unmerged(run, tok, "bfloat16").float()  # the same bf16 base, adapter applied unmerged, fp32 math
    with torch.no_grad():
        ours = merged.float()(input_ids=ids).logits
        theirs = reference(input_ids=ids).logits
        with reference.disable_adapter():
            plain = reference(input_ids=ids).logits
    merge_error, adapter_effect = (ours - theirs).abs().max().item(), (theirs - plain).abs().max().item()
    print(f"max |merged - unmerged| = {merge_error:.4g}, max |adapter effect| = {adapter_effect:.4g}")
    assert adapter_effect > 0.05 and merge_error < 0.1 * adapter_effect  # only the bf16 rounding of W + BA
