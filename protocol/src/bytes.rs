//! `#[serde(with = "crate::bytes")]` for `Vec<u8>` fields: serialized as one byte string
//! instead of a sequence of single bytes. The bincode encoding is the same (length, then the
//! bytes), so peers on either side agree; it only moves the bytes in bulk (a 1 MiB snapshot
//! chunk took a quarter second to encode and decode byte by byte in a debug build).

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(Bytes)
}

struct Bytes;

impl<'de> Visitor<'de> for Bytes {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    /// Formats that spell bytes as a sequence (JSON arrays).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // Grows with what arrives, not with the size the input claims.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain(Vec<u8>);
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Bulk(#[serde(with = "crate::bytes")] Vec<u8>);

    #[test]
    fn same_encoding_as_a_plain_vec() {
        let data: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let a = crate::codec::encode(&Plain(data.clone())).expect("encode");
        let b = crate::codec::encode(&Bulk(data.clone())).expect("encode");
        assert_eq!(a, b);
        assert_eq!(crate::codec::decode::<Bulk>(&a), Ok(Bulk(data.clone())));
        assert_eq!(crate::codec::decode::<Plain>(&b), Ok(Plain(data)));
        // A length over the limit is refused, not allocated.
        let mut huge = vec![crate::codec::VERSION, 252];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(crate::codec::decode::<Bulk>(&huge).is_err());
    }
}
