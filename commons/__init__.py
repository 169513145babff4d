"""The commons every layer may import: typed configs, user errors, atomic I/O, registries, the data
directory, run tracking and machine facts. It imports no other project package."""
