"""ta_rag: index course chunks, answer only from context with timestamp citations (to come)."""
