"""Numbers fedrun runs by, each with its unit in its name or comment.

Keeping them in one module means a reader finds every timeout, size and limit in one place.
"""

from __future__ import annotations

# Tensor names
#: names of optimizer-state tensors (``opt_treatment: CONTINUE_GLOBAL``) start with this: they are
#: averaged, never stepped by a server optimizer, and sent only under CONTINUE_GLOBAL
OPTIMIZER_PREFIX = "__opt_"
#: optimizer state one result may carry, per byte and per tensor of the model's own weights
#: (Adam with amsgrad keeps three moments and a step per weight, in float32 even for float16
#: weights: 6x the bytes, 4 tensors per weight); more is refused, so that no collaborator can
#: grow the global model without bound
OPTIMIZER_STATE_FACTOR = 8
#: seconds without data after which an upload is dropped once its round may close (a cut-off
#: straggler policy); otherwise an upload is dropped after collaborator_timeout
UPLOAD_STALL_SECONDS = 30.0

# Wire format
#: tensor payload per stream message. 2 MiB rather than 4: the aggregator's memory per upload is a
#: few times its receive window (two chunks), and round times were the same (benchmarks/round_overhead)
CHUNK_BYTES = 2 << 20
GRPC_MAX_MESSAGE_BYTES = 16 << 20  # 16 MiB: a chunk plus headers, far below gRPC's caps
#: largest network.settings.chunk_bytes: a data frame adds a few bytes of framing to its chunk
MAX_CHUNK_BYTES = GRPC_MAX_MESSAGE_BYTES - 64
MAX_TENSOR_BYTES = 1 << 40  # 1 TiB declared size: anything larger is refused as nonsense

# Long poll: how long the aggregator holds a GetTasks call open before answering "ask again"
LONG_POLL_SECONDS = 20.0
# Client-side deadline for one long poll (server window plus network slack)
LONG_POLL_CLIENT_DEADLINE_SECONDS = LONG_POLL_SECONDS + 15.0

# Reconnection (collaborator side); plan keys override these defaults
RECONNECT_INITIAL_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0
RECONNECT_TIMEOUT_SECONDS = 600.0  # give up after 10 minutes without the aggregator

# A collaborator that has not called for this long is reported as gone
COLLABORATOR_TIMEOUT_SECONDS = 300.0
# After the experiment ends, how long the aggregator stays up for collaborators it never saw
# (started late, e.g. after a straggler policy closed every round without them) to learn it
END_GRACE_SECONDS = 30.0

# Unary RPC deadline (ping, small calls)
UNARY_DEADLINE_SECONDS = 30.0
# A model download that brings no data for this long is given up and asked for again (a
# stream has no deadline as a whole: a large model on a slow link may take hours)
STREAM_STALL_SECONDS = 300.0

# Port range used when network.settings.agg_port is "auto" (derived from the plan hash)
AUTO_PORT_MIN = 49152
AUTO_PORT_MAX = 60999

# Files inside a workspace
PLAN_FILE = "plan/plan.yaml"
COLS_FILE = "plan/cols.yaml"
DATA_FILE = "plan/data.yaml"
METRICS_FILE = "logs/metrics.jsonl"

# Environment variables
ENV_FQDN = "FQDN"
ENV_MNIST_DIR = "FEDRUN_MNIST_DIR"
