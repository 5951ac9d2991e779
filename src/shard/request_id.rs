//! Request ids: a well-formed incoming `X-Request-Id` is kept (so a trace spans systems), anything else is replaced
//! by one generated here, unique per process and worker without coordination: a per-process seed, the worker
//! index and a per-worker counter.

use std::cell::Cell;
use std::fmt::Write;

/// Longest incoming id accepted.
const MAX_LEN: usize = 128;

/// Accepted ids: 1..=128 characters of `A-Z a-z 0-9 - _ . :`; nothing that could break a log line or a header.
pub fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte))
}

/// One worker's id generator.
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    next: Cell<u64>,
}

impl RequestIds {
    pub fn new(process_seed: u64, worker: usize) -> RequestIds {
        RequestIds {
            prefix: format!("{:012x}-{worker:x}-", process_seed & 0xffff_ffff_ffff),
            next: Cell::new(0),
        }
    }

    /// Writes a fresh id into `out` (cleared first).
    pub fn generate(&self, out: &mut String) {
        let counter = self.next.get();
        self.next.set(counter + 1);
        out.clear();
        out.push_str(&self.prefix);
        let _ = write!(out, "{counter:x}");
    }
}

/// A seed that differs between processes and restarts.
pub fn process_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_safe_ids() {
        assert!(is_well_formed(b"abc-123_x.y:z"));
        for bad in [&b""[..], b"has space", b"quote\"", b"new\nline", &[b'a'; 129]] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_unique_and_well_formed() {
        let ids = RequestIds::new(0xabcdef, 3);
        let mut first = String::new();
        let mut second = String::new();
        ids.generate(&mut first);
        ids.generate(&mut second);
        assert_ne!(first, second);
        assert!(first.starts_with("000000abcdef-3-"), "{first}");
        assert!(is_well_formed(first.as_bytes()));
    }
}
