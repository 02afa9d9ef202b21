"""Names vulture (``make deadcode``) cannot see being used; each says who uses it.

Not imported by anything: vulture reads it alongside watchd/ and counts each name
here as a use. Add a name only with the reason; delete code nothing needs instead.
"""

# ruff: noqa: B018
from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# Control commands, dispatched by name ("_cmd_" + the command) in watchd/commands.py.
_._cmd_ping
_._cmd_status
_._cmd_jobs
_._cmd_job
_._cmd_http_ready
_._cmd_http_metrics
_._cmd_http_file
_._cmd_pause
_._cmd_resume
_._cmd_reload
_._cmd_cancel
_._cmd_retry
_._cmd_prune

# FastAPI route functions (registered by their decorators) and pydantic models' fields
# and settings (serialised to JSON by name) in watchd/http/.
_.health
_.metrics
_.stats
_.pause
_.resume
_.events
_.results
_.model_config
_.percent
_.files_count
_.elapsed_seconds
_.eta_seconds
_.next_before
_.whoami
_.thumbnail
_.tokens_required
_.asset
_.attempts
_.seconds
_.started_at

# Called by libraries: watchdog's event handler, io's writable() (zipfile asks it),
# uvicorn reads should_exit, onnxruntime reads its SessionOptions' attributes, Dask
# calls dask_setup when it loads the worker plug-in.
_.on_any_event
_.writable
_.should_exit
_.intra_op_num_threads
_.inter_op_num_threads
_.enable_mem_pattern
_.enable_cpu_mem_arena
_.dask_setup

# Used only in a string annotation (cast("MultipartCallbacks", ...)) under TYPE_CHECKING.
_.MultipartCallbacks

# Dataclass fields and enum members that are read as a whole, not by name: the heap
# order of a scheduled webhook, the states every list of states is built from, and the
# peer's pid, which the control server hands every handler beside the uid it logs.
_.seq
_.PENDING
_.WRITTEN
_.peer_pid

# Control commands added with the quality gate (dispatched by name, as above).
_._cmd_approve
_._cmd_reject

# rembg calls a session's predict() when watchd hands it a U2netSession (alpha matting,
# post-processed masks): the interface of rembg's BaseSession.
_.predict

# Read by the tests that check a worker's loaded models (one model, two sessions: the
# behaviour watchd.imaging.sessions exists for), and through PoolStatus.as_dict() by the
# stats file: fields read as a whole.
_.loaded
_.memory_limit
_.in_cluster
_.REVIEW

# Imported for mypy only (TYPE_CHECKING) and named in a string: the bound of ledger's
# _Record TypeVar (watchd/ledger.py, _from_row).
_.DataclassInstance
