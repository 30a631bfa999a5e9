"""What must outlive a process: rollout state (``state``) and run records (``runs``).

Both sit behind small interfaces with an embedded SQLite implementation; no Ray import.
"""
