"""Reading and writing helpers shared by the stages (rasters, vectors, manifests)."""
