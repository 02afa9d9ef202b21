"""The HTTP door: the queue service's REST API, served from inside the daemon (docs/http.md).

One set of rules, two transports: every request that reads or changes the daemon's
state becomes a :class:`watchd.control.Request` handed to the daemon's main thread,
exactly as the control socket does, and :mod:`watchd.commands` carries it out. This
package only speaks HTTP: authentication (:mod:`.tokens`), streaming uploads into
the spool (:mod:`.uploads`), the routes (:mod:`.app`), the bridge to the main thread
(:mod:`.bridge`) and the server thread's life (:mod:`.server`).
"""
