//! Which partition a keyed record goes to, computed here exactly as librdkafka's partitioners
//! compute it, so that a producer can pick its partition (and with it the producer that owns that
//! partition, docs/architecture.md) before handing the record over, and still place every key
//! where librdkafka would have: on a topic written before, an aggregate's events keep going to
//! the partition its earlier ones are in.
//!
//! The partitioner is librdkafka's `partitioner` property (default `consistent_random`, set by an
//! operator with `RDKAFKA_PRODUCER_PARTITIONER`); `random` places keys nowhere in particular, so
//! it cannot keep an aggregate's events in order and is refused.

use rdkafka::ClientConfig;

/// librdkafka's `partitioner` property.
pub const PARTITIONER_PROPERTY: &str = "partitioner";

/// How keys map to partitions; the `_random` variants of librdkafka differ only for records
/// without a key, which the pipeline never writes (an empty key is hashed like any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// `consistent` and `consistent_random` (librdkafka's default): CRC-32 of the key.
    Crc32,
    /// `murmur2` and `murmur2_random`: the Java client's default, murmur2 of the key.
    Murmur2,
    /// `fnv1a` and `fnv1a_random`: FNV-1a of the key (as Sarama's hash partitioner).
    Fnv1a,
}

/// A `partitioner` this code cannot reproduce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "partitioner {0:?} is not supported: records are keyed by aggregate so that each aggregate's events stay in \
     order in one partition; use consistent_random (the default), murmur2_random (the Java client's) or fnv1a_random"
)]
pub struct UnsupportedPartitioner(pub String);

impl Partitioner {
    /// The partitioner `config` names (librdkafka's default when it names none).
    pub fn of(config: &ClientConfig) -> Result<Self, UnsupportedPartitioner> {
        Self::named(config.get(PARTITIONER_PROPERTY).unwrap_or("consistent_random"))
    }

    /// The partitioner librdkafka calls `name`.
    pub fn named(name: &str) -> Result<Self, UnsupportedPartitioner> {
        match name {
            "consistent" | "consistent_random" => Ok(Self::Crc32),
            "murmur2" | "murmur2_random" => Ok(Self::Murmur2),
            "fnv1a" | "fnv1a_random" => Ok(Self::Fnv1a),
            other => Err(UnsupportedPartitioner(other.to_owned())),
        }
    }

    /// The partition of `key` on a topic of `partitions` partitions (at least 1).
    pub fn partition(self, key: &[u8], partitions: usize) -> i32 {
        let hash = match self {
            Self::Crc32 => crc32(key),
            Self::Murmur2 => murmur2(key) & 0x7fff_ffff,
            Self::Fnv1a => fnv1a(key),
        };
        let partitions = u32::try_from(partitions.max(1)).unwrap_or(u32::MAX);
        i32::try_from(hash % partitions).unwrap_or(i32::MAX)
    }
}

/// CRC-32 (IEEE 802.3, reflected), as zlib's and librdkafka's `rd_crc32`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// MurmurHash2 with the Java client's seed (librdkafka's `rd_murmur2`).
fn murmur2(bytes: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut hash = SEED ^ (bytes.len() as u32);
    let mut words = bytes.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M) ^ k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (shift, &byte) in tail.iter().enumerate().rev() {
            hash ^= u32::from(byte) << (8 * shift);
        }
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^ (hash >> 15)
}

/// 32-bit FNV-1a, made non-negative as a signed value (librdkafka's `rd_fnv1a`, like Sarama).
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: i32 = 0x811C_9DC5_u32 as i32;
    for &byte in bytes {
        hash ^= i32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.wrapping_abs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_checksum() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// librdkafka's own test vectors for `rd_murmur2` (rdmurmur2.c), which are the Java client's.
    #[test]
    fn murmur2_matches_the_java_client() {
        let short = "1234";
        let long = "PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: [(&str, u32); 11] = [
            ("kafka", 0xd067_cf64),
            ("giberish123456789", 0x8f55_2b0c),
            (short, 0x9fc9_7b14),
            (&short[1..], 0xe7c0_09ca),
            (&short[2..], 0x8739_30da),
            (&short[3..], 0x5a4b_5ca1),
            (long, 0x7842_4f1c),
            (&long[1..], 0x4a62_b377),
            (&long[2..], 0xe0e4_e09e),
            (&long[3..], 0x62b8_b43f),
            ("", 0x106e_08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()), expected, "{key:?}");
        }
    }

    #[test]
    fn fnv1a_is_non_negative_as_a_signed_value() {
        // FNV-1a of "" is its offset basis, 0x811C9DC5, negative as an i32: made positive.
        assert_eq!(fnv1a(b""), (0x811C_9DC5_u32 as i32).wrapping_abs() as u32);
        // FNV-1a of "a" is 0xE40C292C, negative too.
        assert_eq!(fnv1a(b"a"), 0x1BF3_D6D4);
    }

    #[test]
    fn names_map_as_librdkafka_documents_them() {
        assert_eq!(Partitioner::of(&ClientConfig::new()), Ok(Partitioner::Crc32));
        assert_eq!(Partitioner::named("murmur2_random"), Ok(Partitioner::Murmur2));
        assert_eq!(Partitioner::named("fnv1a"), Ok(Partitioner::Fnv1a));
        let refused = Partitioner::named("random").expect_err("random is refused").to_string();
        assert!(refused.contains("\"random\"") && refused.contains("consistent_random"), "{refused}");
    }

    #[test]
    fn every_key_lands_on_an_existing_partition() {
        for partitioner in [Partitioner::Crc32, Partitioner::Murmur2, Partitioner::Fnv1a] {
            for key in ["", "1", "42", "an article id", "ünïcödé"] {
                for partitions in [1, 2, 6, 7, 100] {
                    let partition = partitioner.partition(key.as_bytes(), partitions);
                    assert!((0..partitions as i32).contains(&partition), "{partitioner:?} {key:?} {partitions}");
                }
            }
        }
    }
}
