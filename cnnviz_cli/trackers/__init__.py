"""Trackers that ``cnnviz export`` sends runs to, each through its own client library (an optional extra).

Each module has a target class: built from the ``--to`` destination (refusing a missing extra or a target
that cannot be written), with ``send(contents)`` for one run read by ``views.export.compute`` and
``summary()`` saying where to look.
"""
