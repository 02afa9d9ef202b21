"""The worker pool: where files are processed, behind one protocol.

* :mod:`~watchd.pool.protocol`: :class:`~watchd.pool.protocol.Pool`, what the daemon and
  the dispatcher use of any backend, and its typed status;
* :mod:`~watchd.pool.task`: the task a worker gets and the result it returns;
* :mod:`~watchd.pool.factory`: :func:`~watchd.pool.factory.new_pool`, the one place that
  knows which backends exist;
* :mod:`~watchd.pool.local`: spawned processes on this machine (pebble);
* :mod:`~watchd.pool.dask` and :mod:`~watchd.pool.dask_worker`: a Dask cluster, and the
  plug-in its workers preload;
* :mod:`~watchd.pool.worker`: what runs in a worker process of either backend.

Nothing outside this package names a backend (docs/design.md, "How to add a pool backend").
"""
