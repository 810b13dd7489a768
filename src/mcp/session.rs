//! Sealed session ids (being written).
