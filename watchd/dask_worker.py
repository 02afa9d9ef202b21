"""The Dask preload's old name: ``--preload watchd.dask_worker`` keeps working.

Worker hosts set up before the pool had its own package (systemd units, container
commands) name this module; the plug-in is :mod:`watchd.pool.dask_worker`.
"""

from watchd.pool.dask_worker import dask_setup

__all__ = ["dask_setup"]
