//! Object bytes made up on the fly: a counter-based generator (SplitMix64
//! over the 8-byte block index) keyed by (seed, bucket, key), so any range
//! of any object is computed in O(length) without storing anything.

/// The generator's key for one object: FNV-1a over the seed, bucket and
/// key (0xff separates them; it never occurs in UTF-8).
pub fn object_seed(seed: u64, bucket: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&seed.to_le_bytes());
    eat(&[0xff]);
    eat(bucket.as_bytes());
    eat(&[0xff]);
    eat(key.as_bytes());
    h
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn block(key: u64, index: u64) -> [u8; 8] {
    mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA))).to_le_bytes()
}

/// Fills `buf` with the object's bytes from `offset` on.
pub fn fill(key: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut out = buf;
    // An unaligned head.
    let skip = (pos % 8) as usize;
    if skip != 0 && !out.is_empty() {
        let b = block(key, pos / 8);
        let n = (8 - skip).min(out.len());
        out[..n].copy_from_slice(&b[skip..skip + n]);
        out = &mut out[n..];
        pos += n as u64;
    }
    let mut index = pos / 8;
    let mut words = out.chunks_exact_mut(8);
    for word in &mut words {
        word.copy_from_slice(&block(key, index));
        index += 1;
    }
    let tail = words.into_remainder();
    if !tail.is_empty() {
        let n = tail.len();
        tail.copy_from_slice(&block(key, index)[..n]);
    }
}

/// MD5 and SHA-256 (hex) of `size` bytes of the object keyed `key`, in one
/// pass of 1 MiB chunks.
pub fn digests(key: u64, size: u64, md5: bool, sha256: bool) -> (Option<String>, Option<String>) {
    use md5::Digest as _;
    use sha2::Digest as _;
    let mut m = md5.then(md5::Md5::new);
    let mut s = sha256.then(sha2::Sha256::new);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        fill(key, pos, &mut buf[..n]);
        if let Some(m) = m.as_mut() {
            m.update(&buf[..n]);
        }
        if let Some(s) = s.as_mut() {
            s.update(&buf[..n]);
        }
        pos += n as u64;
    }
    (
        m.map(|m| hex::encode(m.finalize())),
        s.map(|s| hex::encode(s.finalize())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_agree_with_the_whole() {
        let key = object_seed(7, "b", "k");
        let mut whole = vec![0u8; 1000];
        fill(key, 0, &mut whole);
        for (start, end) in [(0, 1), (3, 11), (8, 16), (5, 1000), (999, 1000), (13, 14)] {
            let mut part = vec![0u8; end - start];
            fill(key, start as u64, &mut part);
            assert_eq!(part, whole[start..end], "{start}..{end}");
        }
        assert_ne!(object_seed(7, "b", "k"), object_seed(8, "b", "k"));
        assert_ne!(object_seed(7, "b", "k"), object_seed(7, "bk", ""));
    }
}
