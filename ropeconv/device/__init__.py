"""Where models run: the compute device (pick.py), accelerate's placement under --max-memory (placement.py,
with allocator.py returning freed memory under a cap), and giving a model's memory back (memory.py).

Parity, eval, search, extend and the CLI all place and free models the same way, so this sits below all of
them (tests/test_import_graph.py); nothing here imports torch at module level except pick.py.
"""
