"""Keys of the train instructions the server may add for targeted clients (read by clients/app.py),
of the one private record a client may add to its reply, and of the placement metrics every reply carries."""

UPDATE_KEY = "fedsim.update"  # "weights" (default: trained weights) or "gradient" (one batch, FedSGD)
BATCH_KEY = "fedsim.batch-size"  # batch size the server asks for
CAPTURE_KEY = "fedsim.capture"  # this round and client are observed: keep the true batch for scoring
ARCH_KEY = "fedsim.architecture"  # JSON descriptor of a model the server changed (absent: the agreed model)
TRUTH_KEY = "fedsim.truth"  # reply record: the observed client's true batch, stripped by the observation layer
PLACEMENT_KEYS = ("started_at", "ray_gpu", "cuda", "worker_pid")  # where (train and evaluate) and when (train) a
# client ran: per-client records only, never aggregated
