//! Sticky sessions on a worker: which backend a request's cookie names, and the `Set-Cookie` field that sends a
//! client to the backend it was given. The values come signed from the control thread (`control::sticky`); a
//! worker only recognises them, so it needs no key and no table of sessions, and every worker recognises the
//! same values.

use rustc_hash::FxHashMap;

use crate::config::StickyConfig;
use crate::http::cookie;
use crate::http::head::RequestHead;

/// Characters in a cookie value (16 bytes in unpadded base64url).
const VALUE_LEN: usize = 22;

/// Characters of a value looked up in the map; the rest is compared without an early exit.
const PREFIX_LEN: usize = 8;

/// One generation's sticky cookies: recognising them, and writing them.
#[derive(Debug)]
pub struct StickyRoutes {
    cookie: Box<[u8]>,
    /// By the first [`PREFIX_LEN`] characters of its value (48 bits of the tag): the backend and the rest of its
    /// value. An integer lookup and a comparison that does not stop at the first difference, so how long an
    /// answer takes says nothing about how much of a guessed value was right.
    by_prefix: FxHashMap<u64, (usize, [u8; VALUE_LEN - PREFIX_LEN])>,
    /// Per backend: the whole `Set-Cookie: ...\r\n` line.
    set_cookie: Vec<Box<[u8]>>,
}

impl StickyRoutes {
    /// The routes for `config` and the backends' `values` (in config order), or `None` when sticky sessions are
    /// off.
    pub fn new(config: &StickyConfig, values: &[String]) -> Option<StickyRoutes> {
        if !config.enabled || values.is_empty() {
            return None;
        }
        let mut by_prefix = FxHashMap::default();
        let mut set_cookie = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let bytes = value.as_bytes();
            if let Some((prefix, rest)) = split(bytes) {
                by_prefix.insert(prefix, (index, rest));
            }
            set_cookie.push(set_cookie_line(config, value).into_boxed_slice());
        }
        Some(StickyRoutes {
            cookie: config.cookie.as_bytes().into(),
            by_prefix,
            set_cookie,
        })
    }

    /// The backend the request's sticky cookie names, if it carries a valid one.
    pub fn backend_of(&self, bytes: &[u8], head: &RequestHead) -> Option<usize> {
        cookie::every(bytes, head, &self.cookie).find_map(|value| self.recognise(value))
    }

    fn recognise(&self, value: &[u8]) -> Option<usize> {
        let (prefix, rest) = split(value)?;
        let (index, expected) = self.by_prefix.get(&prefix)?;
        let difference = rest
            .iter()
            .zip(expected)
            .fold(0u8, |difference, (got, want)| difference | (got ^ want));
        (std::hint::black_box(difference) == 0).then_some(*index)
    }

    /// The `Set-Cookie` line that sends a client to backend `index`.
    pub fn set_cookie(&self, index: usize) -> &[u8] {
        self.set_cookie.get(index).map_or(&[], |line| line)
    }
}

/// A value's map key and the rest, or `None` when it is not a value's length.
fn split(value: &[u8]) -> Option<(u64, [u8; VALUE_LEN - PREFIX_LEN])> {
    if value.len() != VALUE_LEN {
        return None;
    }
    let (prefix, rest) = value.split_at(PREFIX_LEN);
    let prefix = u64::from_le_bytes(prefix.try_into().ok()?);
    Some((prefix, rest.try_into().ok()?))
}

/// `Set-Cookie: name=value; Path=/; Max-Age=N; Domain=d; Secure; HttpOnly; SameSite=Lax` (RFC 6265 §4.1).
fn set_cookie_line(config: &StickyConfig, value: &str) -> Vec<u8> {
    let mut line = format!("Set-Cookie: {}={value}; Path={}", config.cookie, config.path);
    if let Some(ttl) = config.ttl {
        line.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
    }
    if let Some(domain) = &config.domain {
        line.push_str(&format!("; Domain={domain}"));
    }
    if config.secure {
        line.push_str("; Secure");
    }
    if config.http_only {
        line.push_str("; HttpOnly");
    }
    line.push_str(match config.same_site {
        crate::config::SameSite::Lax => "; SameSite=Lax",
        crate::config::SameSite::Strict => "; SameSite=Strict",
        crate::config::SameSite::None => "; SameSite=None",
    });
    line.push_str("\r\n");
    line.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SameSite;
    use crate::http::head::{parse_request, HeadLimits};
    use std::time::Duration;

    fn config() -> StickyConfig {
        StickyConfig {
            enabled: true,
            cookie: "srv".into(),
            ttl: Some(Duration::from_secs(3600)),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Strict,
            secret_file: None,
        }
    }

    const VALUES: [&str; 2] = ["2ClvuA7iS5b_TZaS2FmoVw", "Zm9vYmFyZm9vYmFyZm9vYg"];

    fn backend_for(routes: &StickyRoutes, cookie_field: &str) -> Option<usize> {
        let request = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {cookie_field}\r\n\r\n");
        let limits = HeadLimits {
            max_head_bytes: 8192,
            max_request_line: 8192,
            max_headers: 100,
        };
        let head = parse_request(request.as_bytes(), &limits).unwrap().unwrap();
        routes.backend_of(request.as_bytes(), &head)
    }

    #[test]
    fn a_value_names_its_backend_and_anything_else_names_none() {
        let values: Vec<String> = VALUES.iter().map(|value| value.to_string()).collect();
        let routes = StickyRoutes::new(&config(), &values).unwrap();
        assert_eq!(backend_for(&routes, &format!("a=1; srv={}", VALUES[1])), Some(1));
        assert_eq!(backend_for(&routes, &format!("srv={}", VALUES[0])), Some(0));
        let mut forged = VALUES[0].as_bytes().to_vec();
        forged[21] ^= 1;
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            backend_for(&routes, &format!("srv={forged}")),
            None,
            "one bit off in the last character"
        );
        assert_eq!(
            backend_for(&routes, &format!("srv={}", &VALUES[0][..21])),
            None,
            "one character short"
        );
        assert_eq!(
            backend_for(&routes, "srv=127.0.0.1:9001"),
            None,
            "an address names nothing"
        );
        assert_eq!(
            backend_for(&routes, &format!("other={}", VALUES[0])),
            None,
            "another cookie's name"
        );
        assert_eq!(
            backend_for(&routes, &format!("srv=stale; a=1; srv={}", VALUES[1])),
            Some(1),
            "a stale cookie of the same name before the current one"
        );
    }

    #[test]
    fn the_set_cookie_line_carries_every_configured_attribute() {
        let routes = StickyRoutes::new(&config(), &[VALUES[0].to_string()]).unwrap();
        assert_eq!(
            std::str::from_utf8(routes.set_cookie(0)).unwrap(),
            format!(
                "Set-Cookie: srv={}; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Strict\r\n",
                VALUES[0]
            )
        );
        let off = StickyConfig {
            enabled: false,
            ..config()
        };
        assert!(StickyRoutes::new(&off, &[VALUES[0].to_string()]).is_none());
    }
}
