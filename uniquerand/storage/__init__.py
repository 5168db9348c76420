"""Stores: files, locks and SQL. Nothing here knows Flask or HTTP."""
