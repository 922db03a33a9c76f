"""voxmesh command line."""
