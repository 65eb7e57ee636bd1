"""spurge: map invasive plants from drone orthomosaics with few labelled field plots."""

__version__ = "0.1.0"

#: The seed every command and stage uses unless told otherwise (same seed, same outputs).
DEFAULT_SEED = 0
