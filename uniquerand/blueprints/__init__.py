"""One blueprint per stage of the design, plus the index and health endpoints."""
