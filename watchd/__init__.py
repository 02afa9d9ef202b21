"""watchd: a daemon that turns images dropped into inbox folders into background-free cutouts."""

__version__ = "0.1.0"
