"""Pure rules and types: no I/O, no third-party imports beyond the standard library."""
