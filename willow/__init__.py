"""willow-tf2's internal modules (the scripts users run stay at the top level)."""
