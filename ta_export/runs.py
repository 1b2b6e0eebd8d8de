"""A finished training run dir, read back: its typed TrainConfig and where its HF outputs lie.

`ta_train.train` writes `run.json` (the resolved config, always), `.hydra/config.yaml` (CLI runs),
`plan.json`, and either `adapter/` (LoRA/QLoRA, PEFT format) or `model/` (full fine-tune). A random
base (the tiny test model) is saved beside the adapter as `base/`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ta_train.config import PeftMethod, TrainConfig


class ExportError(ValueError):
    """A run or request that cannot be exported (the message says which file or field and why)."""


@dataclass(frozen=True)
class Run:
    path: Path
    cfg: TrainConfig
    adapter_dir: Optional[Path]  # PEFT adapter (LoRA/QLoRA), None for a full fine-tune
    model_dir: Optional[Path]  # full fine-tune weights, None under LoRA/QLoRA

    @property
    def hf_dir(self) -> Path:
        """The folder with the run's tokenizer (and chat template): adapter/ or model/."""
        return self.adapter_dir or self.model_dir  # type: ignore[return-value]

    @property
    def family(self) -> str:
        return self.cfg.model.chat_family.value


def _typed(plain: dict[str, Any], source: Path) -> TrainConfig:
    from omegaconf import OmegaConf

    from ta_train.config import register_configs

    register_configs()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), plain)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except Exception as err:  # omegaconf raises several validation types
        raise ExportError(f"{source}: not a ta_train config ({err})") from err


def load_config(run_dir: Path) -> TrainConfig:
    """The run's resolved TrainConfig: `run.json` (written by every run), else `.hydra/config.yaml`."""
    run_json = run_dir / "run.json"
    if run_json.is_file():
        try:
            plain = json.loads(run_json.read_text(encoding="utf-8"))["config"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ExportError(f"{run_json}: unreadable run record ({err})") from err
        return _typed(plain, run_json)
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        from omegaconf import OmegaConf

        try:
            plain = OmegaConf.to_container(OmegaConf.load(hydra_cfg), resolve=False)
        except Exception as err:  # yaml and omegaconf parse errors
            raise ExportError(f"{hydra_cfg}: unreadable YAML ({err})") from err
        if not isinstance(plain, dict):
            raise ExportError(f"{hydra_cfg}: expected a mapping of config groups")
        plain["run_dir"] = str(run_dir)  # ${hydra:...} does not resolve outside Hydra
        return _typed(plain, hydra_cfg)
    raise ExportError(f"run={run_dir}: neither run.json nor .hydra/config.yaml is there; is this a ta_train run dir?")


def load_run(run_dir: str | Path) -> Run:
    """Read a run dir; clear errors for a missing dir, a missing config, or no saved model."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ExportError(f"run={run_dir}: no such run directory")
    cfg = load_config(path)
    adapter, model = path / "adapter", path / "model"
    adapter_dir = adapter if (adapter / "adapter_config.json").is_file() else None
    model_dir = model if (model / "config.json").is_file() else None
    if adapter_dir is None and model_dir is None:
        expected = "model/config.json" if cfg.peft.method == PeftMethod.none else "adapter/adapter_config.json"
        raise ExportError(
            f"run={path}: no trained weights ({expected} is missing); the run did not finish "
            "(ta_train saves them after fit), or this is not a run dir"
        )
    return Run(path=path, cfg=cfg, adapter_dir=adapter_dir, model_dir=model_dir)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
