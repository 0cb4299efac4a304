"""fedsim: federated-learning simulation with attack hooks for medical imaging."""

import os as _os

__version__ = "0.1.0"

# A privacy tool sends nothing home: Flower's telemetry (read when flwr is first imported) and Ray's
# usage statistics (which also probe cloud metadata servers) are off unless the user turns them on.
# Ray workers inherit these from the driver (fedsim.ray_setup passes them to a cluster's workers).
NO_PHONE_HOME = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
for _key, _value in NO_PHONE_HOME.items():
    _os.environ.setdefault(_key, _value)
