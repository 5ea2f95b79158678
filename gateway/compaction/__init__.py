"""Closed hour partitions compacted to Parquet, and the retention budget of the data directory."""
