"""Entry points: one module per ``medtok-qa`` command, each a thin ``main(argv)`` that parses a typed
config and calls library functions. The top layer: nothing imports it."""
