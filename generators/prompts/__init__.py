"""The prompt library: versioned template files per step and family, and the pydantic response schemas
that enforce each family's limits (``schemas``), registered per family (``families``)."""
