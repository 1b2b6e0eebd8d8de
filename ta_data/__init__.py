"""ta_data: raw course material and open datasets -> clean, private, deduplicated SFT data (no torch)."""
