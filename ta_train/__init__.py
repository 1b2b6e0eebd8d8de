"""ta_train: SFT (and later DPO/ORPO) of causal LMs as Lightning modules, configured by Hydra."""
