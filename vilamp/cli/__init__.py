"""The `vilamp` command line: the one place that drives the processor and the model together (`vilamp.cli.main`)."""

__all__ = []
