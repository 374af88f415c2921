"""pytest plugin: bbt's fixtures for offline tests (registered through the pytest11 entry point)."""
