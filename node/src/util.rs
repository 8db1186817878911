//! Small helpers with no better home: the wall clock and random ids.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `n` random bytes from the kernel, as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fill_random(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random non-zero u64 (Raft ids).
pub fn random_u64() -> u64 {
    loop {
        let mut buf = [0u8; 8];
        fill_random(&mut buf);
        let v = u64::from_le_bytes(buf);
        if v != 0 {
            return v;
        }
    }
}

fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    // No /dev/urandom: fall back to time and pid mixing (ids need uniqueness, not secrecy).
    let mut x = now_ms() ^ (u64::from(std::process::id()) << 32);
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}
