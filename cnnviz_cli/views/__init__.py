"""Views: what a command shows. Each ``views/<view>.py`` has ``compute(...)`` returning a result
dataclass with ``to_json()``, and ``write(run, result)`` that stages the files and the manifest entry."""
