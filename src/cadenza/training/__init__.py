"""Training loops, checkpoints and resume, distributed setup: torch and numpy only."""
