"""Environment specs, the curated catalogue, and (later) builders with a hash cache."""
