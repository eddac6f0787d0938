"""What tests and benchmarks share: server processes, synthetic data, drawings and model stores.

Nothing here is a fixture; `tests/conftest.py` builds its fixtures from these helpers.
"""
