"""The topology layer's one exception."""


class TopologyError(RuntimeError):
    """Building, configuring or changing the emulated network failed."""
