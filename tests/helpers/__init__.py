"""The tests' helpers (tests/conftest.py keeps only fixtures and hooks): imported as
``helpers.<module>``, tests/ being on sys.path (pytest's rootdir conftest puts it there)."""
