//! Content ids: a blob is named by its BLAKE3 hash, which is also the root of its bao tree.

use std::fmt;
use std::str::FromStr;

/// The id of a blob: its BLAKE3 hash, which is also the root of its bao tree at any chunk-group
/// size (chunk groups change the outboard, never the root).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId([u8; 32]);

/// Why a string is not a [`BlobId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseBlobIdError {
    /// The string does not have the 64 hex digits of a 32-byte hash.
    #[error("blob id must be 64 hex digits, got {found} characters")]
    Length {
        /// How many characters the string had.
        found: usize,
    },
    /// A character is not a hex digit.
    #[error("blob id has a non-hex character {character:?} at position {position}")]
    NotHex {
        /// The offending character.
        character: char,
        /// Its position in the string, counted in characters from 0.
        position: usize,
    },
}

impl BlobId {
    /// The length of a blob id in bytes.
    pub const LEN: usize = 32;

    /// The id of `data`: its BLAKE3 hash.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// A blob id from the raw 32 bytes of a BLAKE3 hash.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id as a BLAKE3 hash, the form bao-tree verifies against.
    pub fn to_hash(self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.0)
    }

    /// A short form for logs: the first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl From<blake3::Hash> for BlobId {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// In JSON (signed metadata, API bodies, journals) a blob id is its 64 hex digits.
impl serde::Serialize for BlobId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for BlobId {
    type Err = ParseBlobIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let found = text.chars().count();
        if found != 2 * Self::LEN {
            return Err(ParseBlobIdError::Length { found });
        }
        // Find the first bad character ourselves so the error can name it; `hex` only says
        // "invalid character" by byte index, which is wrong for multi-byte characters.
        if let Some((position, character)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_hexdigit())
        {
            return Err(ParseBlobIdError::NotHex {
                character,
                position,
            });
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| ParseBlobIdError::Length { found })?;
        Ok(Self(bytes))
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data sizes are small
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = BlobId::of(b"firmware");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<BlobId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<BlobId>(), Ok(id));
    }

    #[test]
    fn parse_errors_name_what_is_wrong() {
        assert_eq!(
            "abc".parse::<BlobId>(),
            Err(ParseBlobIdError::Length { found: 3 })
        );
        let mut text = BlobId::of(b"x").to_string();
        text.replace_range(10..11, "g");
        assert_eq!(
            text.parse::<BlobId>(),
            Err(ParseBlobIdError::NotHex {
                character: 'g',
                position: 10
            })
        );
        let with_multibyte: String = "é".repeat(64);
        assert_eq!(
            with_multibyte.parse::<BlobId>(),
            Err(ParseBlobIdError::NotHex {
                character: 'é',
                position: 0
            })
        );
    }

    #[test]
    fn empty_blob_id_is_blake3_of_nothing() {
        assert_eq!(
            BlobId::of(b"").to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
