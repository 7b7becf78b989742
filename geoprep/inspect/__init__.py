"""The inspect stage: scan shards, check every sample, tally findings, measure band statistics."""
