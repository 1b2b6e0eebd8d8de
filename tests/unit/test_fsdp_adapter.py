"""save_fsdp_adapter writes what PEFT's own save writes, from a full state dict (no private PEFT API)."""
from __future__ import annotations

import json

import torch

from ta_train.model import adapter_file_key, build_model, save_fsdp_adapter


def test_adapter_file_key_drops_the_adapter_name_only():
    assert adapter_file_key("base_model.model.layers.0.q_proj.lora_A.default.weight", "default") == \
        "base_model.model.layers.0.q_proj.lora_A.weight"
    assert adapter_file_key("m.q_proj.lora_magnitude_vector.default", "default") == "m.q_proj.lora_magnitude_vector"
    assert adapter_file_key("default.q_proj.lora_A.other.weight", "default") == "default.q_proj.lora_A.other.weight"


def test_save_fsdp_adapter_writes_peft_s_adapter_files(make_cfg, smollm2_tokenizer, tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    model = build_model(make_cfg())
    with torch.no_grad():  # B starts at zero: give every adapter weight a value of its own
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    save_fsdp_adapter(model, smollm2_tokenizer, tmp_path / "a", model.state_dict())
    model.save_pretrained(tmp_path / "peft")  # PEFT's own save of the same (unwrapped) model
    ours, peft = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert ours.keys() == peft.keys() == get_peft_model_state_dict(model).keys() and len(ours) > 0
    assert all(torch.equal(ours[k], peft[k]) for k in ours)
    config = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("a", "peft")]
    assert config[0] == config[1] and config[0]["inference_mode"] is True and not model.peft_config["default"].inference_mode
    loaded = PeftModel.from_pretrained(model.get_base_model(), tmp_path / "a", adapter_name="again")
    trained = {n: p for n, p in loaded.named_parameters() if ".default." in n}
    for n, p in loaded.named_parameters():
        if ".again." in n:
            assert torch.equal(p, trained[n.replace(".again.", ".default.")]), n
