"""Results collector: run folders -> tables in the papers' layout (arrives with its issue)."""
