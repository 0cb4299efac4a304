"""Keys of the train instructions the server may add for targeted clients (read by clients/app.py),
of the private records a client may add to its reply, and of the placement metrics every reply carries."""

UPDATE_KEY = "fedsim.update"  # "weights" (default: trained weights) or "gradient" (one batch, FedSGD)
BATCH_KEY = "fedsim.batch-size"  # batch size the server asks for
CAPTURE_KEY = "fedsim.capture"  # this round and client are observed: keep the true batch for scoring
ARCH_KEY = "fedsim.architecture"  # JSON descriptor of a model the server changed (absent: the agreed model)
TRUTH_KEY = "fedsim.truth"  # reply record: the observed client's true batch, stripped by the observation layer
DEFENSE_STATE_KEY = "fedsim.defense-state"  # what a client's defenses remember (numbers; tensors below): kept in
DEFENSE_TENSORS_KEY = "fedsim.defense-tensors"  # the client's context, copied into its train reply for the server's
# checkpoint (stripped by the observation layer like the truth) and sent back once to a client of a resumed run
PLACEMENT_KEYS = ("started_at", "ray_gpu", "cuda", "worker_pid")  # where (train and evaluate) and when (train) a
# client ran: per-client records only, never aggregated
