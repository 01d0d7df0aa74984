"""The send engine: rendering and field checks, the rate limiter, per-class handling and the
retry policy, and the dry run's plan. Plain Python: no Prefect and no database (the layer
table in tests/test_layers.py pins it), so Prefect tasks in tasks/ and the benchmarks drive
the same code.
"""
