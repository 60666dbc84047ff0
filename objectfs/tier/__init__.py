"""The local tier: hot file data on local disk (store.py: blocks, index,
bound; tier.py: the mount's read-through and write-behind)."""
