"""The call store: one writer thread over SQLite, the schema, and the typed read queries."""
