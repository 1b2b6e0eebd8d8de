"""Stage 1 of ta_data ("Read"): course files -> Documents, FAQ/QA logs -> QAPairs, plus Rejects.

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
from ta_data.readers.qa import read_qa

__all__ = [
    "iter_course_dir",
    "read_course_file",
    "read_markdown",
    "read_pdf",
    "read_qa",
    "read_srt",
    "read_text",
    "read_vtt",
]
