"""voxmesh: a real-time voice agent platform.

`voxmesh.core` holds what every service repeats; `voxmesh.v1` is generated from
proto/voxmesh/v1 by `make proto` (never edited by hand).
"""
