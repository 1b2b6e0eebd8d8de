"""Typed config of the ta_data pipeline, composed by Hydra from `conf/data.yaml` + the `data` group.

`conf/data.yaml` holds the stage settings (read ... refusals); the `data` group file
(`conf/data/teaching_mix.yaml`) is shared with ta_train: ta_train reads its `sources` (the
pipeline's `sft.jsonl`) and `val_sources` (its `val.jsonl`), ta_data reads its `mix` block
(replay data, ratios and caps, split, evalset, output form) and `dir` (the default output folder). Only OmegaConf and Hydra are imported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
STAGES = ("read", "clean", "quality", "pii", "dedup", "chunk", "synth", "refusals", "mix")
"""Pipeline stages in order; `stage=NAME` runs one of them on the previous stage's file."""


@dataclass
class ReadConfig:
    qa_globs: list[str] = field(default_factory=lambda: ["*faq*", "*qa*.jsonl", "*qa*.csv", "*qa_log*"])
    """Files (fnmatch on the path relative to input) read as FAQ/QA logs (QAPairs), not notes."""
    off_course_globs: list[str] = field(default_factory=lambda: ["*refusal*", "*off_course*"])
    """QA files whose questions are out of scope: their questions feed stage 8 (refusals)."""
    skip_globs: list[str] = field(default_factory=lambda: ["README*", ".*"])
    """Files not read at all (the course's own README, hidden files)."""


@dataclass
class CleanStageConfig:
    fix_mojibake: bool = True
    normalize_width: bool = True
    keep_cjk_punct: bool = True
    to_simplified: bool = True
    normalize_whitespace: bool = True
    confidential_markers: Optional[list[str]] = None  # None: ta_data/resources/confidential_markers.txt
    boilerplate_patterns: Optional[list[str]] = None  # None: ta_data/resources/clean_patterns_{zh,en}.txt
    sensitive_words: Optional[str] = None  # path of a word list (one per line); None: not checked


@dataclass
class QualityConfig:
    min_units: int = 5  # Latin words + CJK characters
    langs: list[str] = field(default_factory=lambda: ["zh", "en"])


@dataclass
class PiiConfig:
    roster: Optional[str] = None  # csv/txt of `name,student_id` rows (ta_data.pii.load_roster)


@dataclass
class DedupConfig:
    threshold: float = 0.9  # Jaccard of character 5-gram sets
    batch_docs: int = 1024  # documents sketched per step: transient memory ~40 bytes x their characters


@dataclass
class ChunkStageConfig:
    min_tokens: int = 300
    max_tokens: int = 800
    overlap_tokens: int = 50
    tokenizer: Optional[str] = None  # HF tokenizer path; None: the fast estimate


@dataclass
class TeacherStageConfig:
    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)  # other ta_data.teacher.TeacherConfig fields


@dataclass
class SynthStageConfig:
    backend: str = "template"  # template | teacher
    kinds: list[str] = field(default_factory=lambda: ["answer", "extract", "summary", "quiz"])
    per_chunk: int = 2
    seed: int = 0
    teacher: TeacherStageConfig = field(default_factory=TeacherStageConfig)

    def __post_init__(self) -> None:
        if self.backend not in ("template", "teacher"):
            raise ValueError(f"synth.backend={self.backend!r}: expected template or teacher")


@dataclass
class RefusalConfig:
    share: float = 0.1  # refusals / all course records
    seed: int = 0


@dataclass
class ReplaySource:
    """General instruction data replayed against forgetting, read by ta_data.readers.read_open_dataset."""

    path: str = MISSING
    format: str = "alpaca"  # any ta_data.readers.OPEN_DATA_FORMATS name
    ratio: Optional[float] = None  # records per course record (0.2 = one for five); None: all
    cap: Optional[int] = None  # at most this many records


@dataclass
class MixConfig:
    """Stage 9: what goes into sft.jsonl, and how it is split."""

    ratios: dict[str, float] = field(default_factory=dict)
    """kind -> keep share (answer: 1.0, quiz: 0.5); kinds not named keep everything."""
    caps: dict[str, int] = field(default_factory=dict)
    """kind or source file -> at most this many records."""
    replay: list[ReplaySource] = field(default_factory=list)
    val_fraction: float = 0.05  # by hash of the record: the same record always lands on the same side
    evalset_per_kind: int = 20  # at most this many held-out items per evalset kind (factual, refusal, format, citation)
    evalset_fraction: float = 0.1  # and at most this share of the course records eligible for that kind
    format: str = "alpaca"  # alpaca | sharegpt
    system_prompt: Optional[str] = None  # evalset messages start with it when set
    seed: int = 0  # salt of the split and sampling hashes

    def __post_init__(self) -> None:
        if self.format not in ("alpaca", "sharegpt"):
            raise ValueError(f"data.mix.format={self.format!r}: expected alpaca or sharegpt")


@dataclass
class PipelineConfig:
    input: str = MISSING  # a course folder or one file
    output: str = MISSING  # the output folder (default: data.dir)
    stage: Optional[str] = None  # run this stage alone on DIR/stages/<previous>.jsonl
    num_proc: int = 1  # worker processes for the per-document stages (clean, quality, pii)
    keep_raw_stages: bool = False  # keep DIR/stages/{read,clean,quality}.jsonl (they hold unscrubbed PII)
    progress: bool = True  # tqdm bars on stderr
    data: Any = MISSING  # the `data` group; ta_data reads name, dir and mix
    read: ReadConfig = field(default_factory=ReadConfig)
    clean: CleanStageConfig = field(default_factory=CleanStageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    chunk: ChunkStageConfig = field(default_factory=ChunkStageConfig)
    synth: SynthStageConfig = field(default_factory=SynthStageConfig)
    refusals: RefusalConfig = field(default_factory=RefusalConfig)

    def __post_init__(self) -> None:
        if self.stage is not None and self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}: expected one of {', '.join(STAGES)}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc={self.num_proc}: expected >= 1")

    @property
    def mix(self) -> MixConfig:
        """The `data.mix` block typed as MixConfig (defaults when the data group has none)."""
        raw = (self.data or {}).get("mix") or {}
        merged = OmegaConf.merge(OmegaConf.structured(MixConfig), raw)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="data_pipeline_schema", node=PipelineConfig)


def compose_config(overrides: list[str]) -> tuple[PipelineConfig, dict[str, Any]]:
    """(typed config, the plain resolved dict for card.json) from `key=value` overrides.

    A typo (`dedup.treshold=0.8`) or a wrong type fails here, naming the key.
    """
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg: DictConfig = compose(config_name="data", overrides=overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    typed: PipelineConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    typed.data = plain["data"]  # type: ignore[index]
    typed.mix  # noqa: B018  (validates data.mix now, before any stage runs)
    return typed, plain  # type: ignore[return-value]
