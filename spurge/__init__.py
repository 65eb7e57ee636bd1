"""spurge: map invasive plants from drone orthomosaics with few labelled field plots."""

__version__ = "0.1.0"
