"""Preprocessing stage: shard plan, per-shard PNG conversion, manifest collection, training cache."""
