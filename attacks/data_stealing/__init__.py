"""Data stealing through networks exported from a data lake: the malicious recipe, its codec, and
the owner's extraction outside the lake."""
