"""The control core's configuration error (its own module: the limits, the kinematics
and the workspace floor all raise it, and the limits load the other two)."""


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message says why."""
