"""The `devserver` command line: each command parses, calls one function, renders."""
