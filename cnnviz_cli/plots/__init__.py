"""Figure builders: each takes tensors or plain data and returns a matplotlib ``Figure``.

They use matplotlib's object API with the Agg canvas (no pyplot, no global state); they never
write files: ``plots.common.png_bytes`` turns a figure into bytes, and the store writes them.
"""
