//! Per-worker upstream pool (being written).
