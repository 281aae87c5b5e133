"""One module per command: parse options, build a config, call the core, render the result."""
