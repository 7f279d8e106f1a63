"""Data half of the pipeline: layouts, synthetic data, decoding, validation and shards."""
