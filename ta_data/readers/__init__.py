"""Stage 1 of ta_data ("Read"): course files -> Documents, FAQ/QA logs -> QAPairs, open
instruction datasets in their published formats -> SFT records, plus Rejects.

Readers are generators: iterate them to read, and pass a list that collects every Reject.
"""
from ta_data.readers.course import (
    iter_course_dir,
    read_course_file,
    read_markdown,
    read_pdf,
    read_srt,
    read_text,
    read_vtt,
)
from ta_data.readers.open_data import FORMATS as OPEN_DATA_FORMATS
from ta_data.readers.open_data import read_open_dataset
from ta_data.readers.qa import read_qa

__all__ = [
    "OPEN_DATA_FORMATS",
    "read_open_dataset",
    "iter_course_dir",
    "read_course_file",
    "read_markdown",
    "read_pdf",
    "read_qa",
    "read_srt",
    "read_text",
    "read_vtt",
]
