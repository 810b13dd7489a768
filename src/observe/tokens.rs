//! Estimated tokens: what a reply pulls into a model's context, counted from its bytes while it
//! is relayed (token quotas, the audit record, metrics). One function, so every place agrees.
//!
//! The estimate is `ceil(bytes / 4)`: about four bytes of JSON or English text per token for
//! the BPE tokenizers current models use. It is cheap enough for the hot path (no tokenizer
//! runs) and errs high on short ASCII, low on dense non-Latin text.

/// Bytes per estimated token.
pub const BYTES_PER_TOKEN: u64 = 4;

/// Estimated tokens of `bytes` bytes of reply.
pub const fn estimated_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_TOKEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_token_counts_whole() {
        assert_eq!(estimated_tokens(0), 0);
        assert_eq!(estimated_tokens(1), 1);
        assert_eq!(estimated_tokens(4), 1);
        assert_eq!(estimated_tokens(5), 2);
    }
}
