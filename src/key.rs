//! `BlobKey`: the MD5 of a blob's content, parsed once at the HTTP boundary.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

/// The MD5 digest that names a blob. Parsing accepts 32 hex digits in either
/// case; `Display` is always lower case, the canonical form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey([u8; 16]);

/// Why a string is not a blob key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a blob key is exactly 32 hexadecimal digits (the MD5 of the content)")]
pub struct InvalidKey;

impl BlobKey {
    /// The key of the empty blob.
    pub const EMPTY: BlobKey = BlobKey([
        0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42, 0x7e,
    ]);

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        BlobKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The key a finished hasher stands for.
    pub fn from_digest(hasher: Md5) -> Self {
        BlobKey(hasher.finalize().into())
    }

    /// The key of a byte slice (tests and small bodies).
    pub fn of(data: &[u8]) -> Self {
        BlobKey(Md5::digest(data).into())
    }
}

impl FromStr for BlobKey {
    type Err = InvalidKey;

    fn from_str(s: &str) -> Result<Self, InvalidKey> {
        if s.len() != 32 {
            return Err(InvalidKey);
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| InvalidKey)?;
        Ok(BlobKey(out))
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        // Cannot fail: the buffer is exactly twice the input.
        hex::encode_to_slice(self.0, &mut buf).expect("32-byte buffer");
        f.write_str(std::str::from_utf8(&buf).expect("hex is ASCII"))
    }
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobKey({self})")
    }
}

impl serde::Serialize for BlobKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_either_case_and_prints_lower() {
        let k: BlobKey = "D41D8CD98F00B204E9800998ECF8427E".parse().unwrap();
        assert_eq!(k, BlobKey::EMPTY);
        assert_eq!(k.to_string(), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        for bad in [
            "",
            "abc",
            "d41d8cd98f00b204e9800998ecf8427",
            "d41d8cd98f00b204e9800998ecf8427ee",
            "g41d8cd98f00b204e9800998ecf8427e",
            "d41d8cd98f00b204e9800998ecf8427é",
        ] {
            assert_eq!(bad.parse::<BlobKey>(), Err(InvalidKey), "{bad:?}");
        }
    }

    #[test]
    fn empty_constant_is_md5_of_nothing() {
        assert_eq!(BlobKey::of(b""), BlobKey::EMPTY);
    }

    #[test]
    fn serde_round_trip() {
        let k = BlobKey::of(b"hello");
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, "\"5d41402abc4b2a76b9719d911017c592\"");
        assert_eq!(serde_json::from_str::<BlobKey>(&json).unwrap(), k);
    }
}
