//! Digests the loader names and versions things by: SHA-256, truncated.

use sha2::{Digest, Sha256};

/// A 128-bit digest of a value, for telling whether a cluster or virtual host changed without
/// keeping a copy of it. SHA-256 under [`std::hash::Hash`], whose encoding of strings and
/// sequences is unambiguous (lengths and terminators), truncated to 16 bytes.
pub fn digest(value: &impl std::hash::Hash) -> [u8; 16] {
    struct Sha(Sha256);
    impl std::hash::Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            unreachable!("digest() reads the full SHA-256 state, not a u64")
        }
    }
    let mut hasher = Sha(Sha256::new());
    value.hash(&mut hasher);
    hasher.0.finalize()[..16].try_into().expect("SHA-256 is 32 bytes")
}

/// The first `bytes` bytes of the SHA-256 of `parts` (each prefixed with its length, so that
/// `["ab", "c"]` and `["a", "bc"]` differ), in lowercase hex.
pub fn parts_hex(parts: &[&[u8]], bytes: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize()[..bytes])
}

/// The first `bytes` bytes of the SHA-256 of `data`, in lowercase hex.
pub fn sha256_hex(data: &[u8], bytes: usize) -> String {
    hex(&Sha256::digest(data)[..bytes])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(parts_hex(&[b"ab", b"c"], 8), parts_hex(&[b"a", b"bc"], 8));
        assert_eq!(parts_hex(&[b"x"], 8).len(), 16);
        assert_eq!(hex(&[0, 255]), "00ff");
        assert_eq!(digest(&"a"), digest(&"a"));
        assert_ne!(digest(&("a", "b")), digest(&("ab", "")));
    }
}
