"""The orchestration layer: the pipeline that drives the searches (search/) and the report
(analysis/) as one run (docs/architecture.md)."""
