"""The bad-input corpus (``corpus.py``) and the tests that run the real stages on it."""
