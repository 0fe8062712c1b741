"""Training: the loop and what guards a run folder while it trains."""
