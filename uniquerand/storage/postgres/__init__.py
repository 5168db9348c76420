"""The PostgreSQL stores: /v3, /v4 and /v5 with all their state in one database that several hosts share."""
