"""The SQLite stores: one module per stage (/v3 `issued`, /v4 `sharded`, /v5 `counters`), shared helpers in `common`."""
