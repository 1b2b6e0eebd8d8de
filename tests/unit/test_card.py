"""ta_data.card: card.json from stage stats files, and the summary table."""
from __future__ import annotations

from ta_data.card import MAX_SOURCE_ROWS, build_card, summary
from ta_data.stage_io import StageStats


def write_stats(out, stage: str, n_in: int, n_out: int, sources: dict[str, int], **extra: int) -> None:
    st = StageStats(stage, n_in, n_out)
    st.out_by_source.update(sources)
    st.out_by_lang.update({"zh": n_out})
    st.extra.update({k.replace("__", ":"): v for k, v in extra.items()})
    if n_in > n_out and stage != "chunk":  # chunk joins documents, it rejects none
        st.rejects_by_reason[f"{stage}: too short"] = n_in - n_out
    st.write(out)


def test_card_sums_the_stages_and_summary_lists_them(tmp_path):
    write_stats(tmp_path, "read", 10, 10, {"a.md": 6, "b.srt": 4})
    write_stats(tmp_path, "quality", 10, 8, {"a.md": 5, "b.srt": 3})
    write_stats(tmp_path, "pii", 8, 8, {"a.md": 5, "b.srt": 3}, pii__PHONE=2, pii__NAME=1)
    write_stats(tmp_path, "dedup", 8, 7, {"a.md": 4, "b.srt": 3}, duplicates__exact=1)
    write_stats(tmp_path, "chunk", 7, 3, {"a.md": 2, "b.srt": 1}, **{"tokens__<=300": 2, "tokens__<=800": 1, "tokens__total": 900})
    card = build_card(tmp_path, {"input": "x"})
    assert card["stages"]["quality"] == {"in": 10, "out": 8, "rejected": 2}
    assert card["pii_found"] == {"NAME": 1, "PHONE": 2}
    assert card["duplicates_removed"] == {"exact": 1}
    assert card["token_histogram"] == {"<=300": 2, "<=800": 1} and card["chunk_tokens_total"] == 900
    assert card["rejects_by_reason"] == {"dedup: too short": 1, "quality: too short": 2}
    assert card["config"] == {"input": "x"} and "mix" not in card["stages"]
    text = summary(card)
    rows = [line.split() for line in text.splitlines()]
    assert ["quality", "10", "8", "2"] in rows and ["PHONE", "2"] in rows and ["exact", "1"] in rows
    assert ["a.md", "6", "5", "4", "2"] in rows  # per source: read, pii, dedup, chunk


def test_summary_folds_small_sources(tmp_path):
    sources = {f"f{i:03d}.md": i + 1 for i in range(MAX_SOURCE_ROWS + 5)}
    write_stats(tmp_path, "read", sum(sources.values()), sum(sources.values()), sources)
    text = summary(build_card(tmp_path, {}))
    assert "(5 more sources)" in text and f"f{MAX_SOURCE_ROWS + 4:03d}.md" in text and "f000.md" not in text
    assert ["(5", "more", "sources)", "15"] in [line.split() for line in text.splitlines()]  # 1+2+3+4+5
