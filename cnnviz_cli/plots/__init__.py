"""Figure builders: each takes tensors or plain data and returns a matplotlib ``Figure``.

They use matplotlib's object API with the Agg canvas (no pyplot, no global state); saving is
separate (``save_figure``), so the store decides where and how a picture is written.
"""
