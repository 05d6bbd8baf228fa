"""The RL math, pure torch (no Ray, no DeepSpeed): advantage estimators and dynamic sampling
(`advantages`), policy losses, KL and the SFT token loss (`losses`), PRPO's paragraph-to-token
mapping (`paragraph_tokens`)."""
