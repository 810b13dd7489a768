//! MCP protocol revisions the gateway speaks, as a closed enum.
//! Parsing is exact (no prefix or case folding): a version string either names a revision or it does not.

/// A protocol revision. Ordered by date, so `a < b` means `a` is older.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ProtocolVersion {
    V2024_11_05 = 1,
    V2025_03_26 = 2,
    V2025_06_18 = 3,
    V2025_11_25 = 4,
    V2026_07_28 = 5,
}

impl ProtocolVersion {
    /// Every revision, oldest first.
    pub const ALL: [ProtocolVersion; 5] = [
        Self::V2024_11_05,
        Self::V2025_03_26,
        Self::V2025_06_18,
        Self::V2025_11_25,
        Self::V2026_07_28,
    ];
    /// The newest session-based (legacy era) revision.
    pub const LATEST_LEGACY: ProtocolVersion = Self::V2025_11_25;
    /// What a request without `MCP-Protocol-Version` is assumed to speak (spec, 2025-06-18 transport rules).
    pub const ASSUMED_WITHOUT_HEADER: ProtocolVersion = Self::V2025_03_26;

    pub fn parse(s: &str) -> Option<Self> {
        Self::parse_bytes(s.as_bytes())
    }

    pub fn parse_bytes(s: &[u8]) -> Option<Self> {
        Some(match s {
            b"2024-11-05" => Self::V2024_11_05,
            b"2025-03-26" => Self::V2025_03_26,
            b"2025-06-18" => Self::V2025_06_18,
            b"2025-11-25" => Self::V2025_11_25,
            b"2026-07-28" => Self::V2026_07_28,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V2024_11_05 => "2024-11-05",
            Self::V2025_03_26 => "2025-03-26",
            Self::V2025_06_18 => "2025-06-18",
            Self::V2025_11_25 => "2025-11-25",
            Self::V2026_07_28 => "2026-07-28",
        }
    }

    pub fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|v| *v as u8 == b)
    }

    /// Session-based revisions (initialize + Mcp-Session-Id).
    pub fn is_legacy(self) -> bool {
        self <= Self::V2025_11_25
    }

    /// JSON-RPC batches are allowed only in 2025-03-26.
    pub fn allows_batches(self) -> bool {
        self == Self::V2025_03_26
    }

    /// From 2025-06-18 on, requests after initialize carry `MCP-Protocol-Version`.
    pub fn has_version_header(self) -> bool {
        self >= Self::V2025_06_18
    }

    /// The version a legacy server answers with when a client asks for `requested`:
    /// the same one if supported, otherwise our latest legacy revision (spec: lifecycle, version negotiation).
    pub fn negotiate(requested: &str) -> ProtocolVersion {
        match Self::parse(requested) {
            Some(v) if v.is_legacy() => v,
            _ => Self::LATEST_LEGACY,
        }
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_revision() {
        for v in ProtocolVersion::ALL {
            assert_eq!(ProtocolVersion::parse(v.as_str()), Some(v));
            assert_eq!(ProtocolVersion::from_u8(v as u8), Some(v));
        }
        assert_eq!(ProtocolVersion::parse("2025-06-18 "), None);
        assert_eq!(ProtocolVersion::parse(""), None);
    }

    #[test]
    fn negotiation_falls_back_to_latest_legacy() {
        assert_eq!(
            ProtocolVersion::negotiate("2025-03-26"),
            ProtocolVersion::V2025_03_26
        );
        assert_eq!(
            ProtocolVersion::negotiate("1999-01-01"),
            ProtocolVersion::LATEST_LEGACY
        );
        assert_eq!(
            ProtocolVersion::negotiate("2026-07-28"),
            ProtocolVersion::LATEST_LEGACY
        );
    }
}
