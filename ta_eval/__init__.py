"""ta_eval: ROUGE/BLEU/EM, refusal and timestamp-citation accuracy; base vs tuned vs quantized (to come)."""
