"""Readings as Parquet: the column rule, a streamed writer, readers for the audit.

The only package that imports pyarrow.
"""
