"""fsdp_refusal: FSDP NO_SHARD with adapters is refused when the config is built."""
from __future__ import annotations

import pytest


def test_no_shard_with_adapters_is_refused_with_the_alternatives(make_cfg):
    for untied in ([], ["model.arch.tie_embeddings=false"]):
        with pytest.raises(ValueError, match="use strategy=ddp"):
            make_cfg("strategy=fsdp", "strategy.fsdp_sharding=NO_SHARD", *untied)  # tiny with peft=lora
    assert make_cfg("strategy=fsdp", "strategy.fsdp_sharding=NO_SHARD", "peft=none").peft.method.value == "none"
    assert make_cfg("strategy=fsdp", "strategy.fsdp_sharding=FULL_SHARD").strategy.name == "fsdp"
    assert make_cfg("strategy=ddp").strategy.name == "ddp"
