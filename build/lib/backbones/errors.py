"""Errors a user fixes from the message alone (the CLI prints them without a traceback)."""


class BackboneConfigError(ValueError):
    """Encoder options that do not fit together (a config value), named with the valid choices."""


class UnknownBackbone(BackboneConfigError):
    """A backbone name the zoo does not register."""
