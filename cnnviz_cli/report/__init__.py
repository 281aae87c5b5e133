"""The HTML report: collecting what the store holds (collect) and rendering it (render)."""
