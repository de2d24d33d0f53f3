"""krone: hierarchical, modular log anomaly detection (KRONE) as a nightly pipeline."""
