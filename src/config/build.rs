//! Builds a typed [`Config`] from TOML text, section by section, collecting every error.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::error::ConfigErrors;
use super::names::Choice;
use super::reader::Section;
use super::*;

/// Parses and validates config text. Returns every problem found, each naming its key.
pub fn parse_config(text: &str) -> Result<Config, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let root: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(error) => {
            errors.push("", format!("TOML syntax error: {}", error.to_string().trim_end()));
            return Err(errors);
        }
    };
    let mut top = Section::root(&root);
    let server = server(&mut top, &mut errors);
    // Before the frontends: their `tls` tables take `[tls]`'s values as defaults.
    let tls = tls(&mut top, &mut errors);
    let frontends = frontends(&mut top, &tls, &mut errors);
    let backends = backends(&mut top, &mut errors);
    let balancer = balancer(&mut top, &mut errors);
    let timeouts = timeouts(&mut top, &mut errors);
    let upstream = upstream(&mut top, &mut errors);
    let retries = retries(&mut top, &mut errors);
    let limits = limits(&mut top, &mut errors);
    let healthcheck = healthcheck(&mut top, &mut errors);
    let ratelimit = ratelimit(&mut top, &mut errors);
    let circuitbreaker = circuitbreaker(&mut top, &mut errors);
    let outlier_detection = outlier_detection(&mut top, &mut errors);
    let logging = logging(&mut top, &mut errors);
    let metrics = metrics(&mut top, &mut errors);
    let control = control(&mut top, &mut errors);
    let admin = admin(&mut top, &mut errors);
    let access_log = access_log(&mut top, &mut errors);
    let health_endpoint = health_endpoint(&mut top, &mut errors);
    top.finish(&mut errors);

    check_port_clashes(&frontends, &metrics, &admin, &mut errors);
    for (index, item) in ratelimit.overrides.iter().enumerate() {
        if !item.frontend.is_empty() && !frontends.iter().any(|frontend| frontend.name == item.frontend) {
            errors.push(
                format!("ratelimit.overrides[{index}].frontend"),
                format!("no frontend is named {:?}", item.frontend),
            );
        }
    }
    if errors.is_empty() {
        Ok(Config {
            server,
            frontends,
            backends,
            balancer,
            timeouts,
            upstream,
            retries,
            limits,
            healthcheck,
            tls,
            ratelimit,
            circuitbreaker,
            outlier_detection,
            logging,
            metrics,
            control,
            admin,
            access_log,
            health_endpoint,
        })
    } else {
        Err(errors)
    }
}

fn server(top: &mut Section, errors: &mut ConfigErrors) -> ServerConfig {
    let mut section = top.section("server", errors);
    let workers = match section.optional::<toml::Value>("workers", errors) {
        None => Workers::Auto,
        Some(toml::Value::String(text)) if text == "auto" => Workers::Auto,
        Some(toml::Value::Integer(count)) if (1..=1024).contains(&count) => Workers::Count(count as usize),
        Some(other) => {
            errors.push(
                section.key_path("workers"),
                format!("must be \"auto\" or a number between 1 and 1024, got {other}"),
            );
            Workers::Auto
        }
    };
    let io_driver = section.choice("io_driver", IoDriverChoice::Auto, errors);
    let pin_workers = section.or("pin_workers", true, errors);
    let shutdown_grace = section.positive_duration("shutdown_grace", Duration::from_secs(10), errors);
    let expose_worker_header = section.or("expose_worker_header", false, errors);
    let splice_bodies = section.or("splice_bodies", true, errors);
    let max_connections = match section.optional::<toml::Value>("max_connections", errors) {
        None => None,
        Some(toml::Value::String(text)) if text == "auto" => None,
        Some(toml::Value::Integer(count)) if (1..=10_000_000).contains(&count) => Some(count as usize),
        Some(other) => {
            errors.push(
                section.key_path("max_connections"),
                format!("must be \"auto\" or a number between 1 and 10000000, got {other}"),
            );
            None
        }
    };
    section.finish(errors);
    ServerConfig {
        workers,
        io_driver,
        pin_workers,
        shutdown_grace,
        expose_worker_header,
        splice_bodies,
        max_connections,
    }
}

fn frontends(top: &mut Section, defaults: &TlsConfig, errors: &mut ConfigErrors) -> Vec<FrontendConfig> {
    let sections = top.array_of_tables("frontends", errors);
    if sections.is_empty() {
        errors.push(
            "frontends",
            "at least one [[frontends]] entry is required (e.g. name = \"web\", port = 8080)",
        );
    }
    let mut names = HashSet::new();
    let mut frontends = Vec::new();
    for (index, mut section) in sections.into_iter().enumerate() {
        let name = section.or("name", format!("frontend{index}"), errors);
        if !names.insert(name.clone()) {
            errors.push(section.key_path("name"), format!("duplicate frontend name {name:?}"));
        }
        let address = section.or("address", IpAddr::V4(Ipv4Addr::UNSPECIFIED), errors);
        let port = section.required::<i64>("port", errors);
        let request_timeout = optional_positive(&mut section, "request_timeout", errors);
        let per_try_timeout = optional_positive(&mut section, "per_try_timeout", errors);
        let tls = section
            .has("tls")
            .then(|| frontend_tls(&mut section, defaults, errors))
            .flatten();
        let port = match port {
            Some(port) if (0..=65535).contains(&port) => Some(port as u16),
            Some(port) => {
                errors.push(
                    section.key_path("port"),
                    format!("must be between 0 and 65535, got {port}"),
                );
                None
            }
            None => None,
        };
        section.finish(errors);
        if let Some(port) = port {
            frontends.push(FrontendConfig {
                name,
                listen: SocketAddr::new(address, port),
                request_timeout,
                per_try_timeout,
                tls,
            });
        }
    }
    frontends
}

/// The handshake timeout when a frontend names none: HAProxy's `timeout client` default for a slow client, long
/// enough for a phone on a bad network, short enough that a silent connection does not hold a slot for minutes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[[frontends]] tls = { ... }`; `None` (with the errors recorded) when it cannot serve.
fn frontend_tls(frontend: &mut Section, defaults: &TlsConfig, errors: &mut ConfigErrors) -> Option<FrontendTls> {
    let mut section = frontend.section("tls", errors);
    let mut certificates = Vec::new();
    let single = (
        section.optional::<String>("cert", errors),
        section.optional::<String>("key", errors),
    );
    let listed = section.array_of_tables("certificates", errors);
    let pair_error = |cert: bool| {
        if cert {
            "a cert needs its key (key = \"...\")"
        } else {
            "a key needs its cert (cert = \"...\")"
        }
    };
    match single {
        (Some(cert), Some(key)) => certificates.push(CertificateFiles {
            cert: cert.into(),
            key: key.into(),
        }),
        (Some(_), None) => errors.push(section.key_path("key"), pair_error(true)),
        (None, Some(_)) => errors.push(section.key_path("cert"), pair_error(false)),
        (None, None) => {}
    }
    for mut item in listed {
        let cert = item.required::<String>("cert", errors);
        let key = item.required::<String>("key", errors);
        item.finish(errors);
        if let (Some(cert), Some(key)) = (cert, key) {
            certificates.push(CertificateFiles {
                cert: cert.into(),
                key: key.into(),
            });
        }
    }
    if certificates.is_empty() {
        match (&defaults.cert, &defaults.key) {
            (Some(cert), Some(key)) => certificates.push(CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => errors.push(
                section.key_path("certificates"),
                "a TLS frontend needs a certificate: cert = \"...\" and key = \"...\", a certificates = \
                 [{ cert, key }, ...] list, or both in [tls]",
            ),
        }
    }
    let client_auth = section.choice("client_auth", defaults.client_auth, errors);
    let client_ca = section
        .optional::<String>("client_ca", errors)
        .map(PathBuf::from)
        .or_else(|| defaults.ca.clone());
    if client_auth != ClientAuth::None && client_ca.is_none() {
        errors.push(
            section.key_path("client_ca"),
            format!(
                "client_auth = \"{}\" needs the CA bundle client certificates are verified against",
                client_auth.name()
            ),
        );
    }
    let client_identity_header = section.optional::<String>("client_identity_header", errors);
    if let Some(name) = &client_identity_header {
        if let Err(reason) = check_identity_header(name) {
            errors.push(section.key_path("client_identity_header"), reason);
        }
    }
    let config = FrontendTls {
        certificates,
        strict_sni: section.or("strict_sni", false, errors),
        handshake_timeout: section.positive_duration("handshake_timeout", HANDSHAKE_TIMEOUT, errors),
        min_version: section.choice("min_version", TlsVersion::Tls12, errors),
        client_auth,
        client_ca,
        client_identity_header,
    };
    section.finish(errors);
    (!config.certificates.is_empty()).then_some(config)
}

/// A header name a backend can be told the client's identity in: a token that is not one the proxy rewrites.
fn check_identity_header(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
    if !token {
        return Err(format!(
            "{name:?} is not a header name: 1 to 64 letters, digits or !#$%&'*+-.^_`|~"
        ));
    }
    if crate::http::rewrite::is_rewritten(name.as_bytes()) {
        return Err(format!(
            "{name:?} is a header corelb sets or removes itself; choose another name"
        ));
    }
    Ok(())
}

fn backends(top: &mut Section, errors: &mut ConfigErrors) -> Vec<BackendConfig> {
    let sections = top.array_of_tables("backends", errors);
    if sections.is_empty() {
        errors.push(
            "backends",
            "at least one [[backends]] entry is required (e.g. url = \"http://127.0.0.1:9001\")",
        );
    }
    let mut ids = HashSet::new();
    let mut backends = Vec::new();
    for mut section in sections {
        let url = section.required::<String>("url", errors);
        let weight = section.integer_in("weight", 1, 1, 1000, errors) as u32;
        let id = section.optional::<String>("id", errors);
        let server_name = section.optional::<String>("server_name", errors);
        if let Some(name) = &server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                errors.push(
                    section.key_path("server_name"),
                    format!("{name:?} is not a DNS name or an IP address"),
                );
            }
        }
        let drain = section.or("drain", false, errors);
        let healthcheck = backend_healthcheck(&mut section, errors);
        let tags = backend_tags(&mut section, errors);
        let max_connections = section
            .optional::<i64>("max_connections", errors)
            .and_then(|limit| match u32::try_from(limit) {
                Ok(limit @ 1..=1_000_000) => Some(limit),
                _ => {
                    errors.push(
                        section.key_path("max_connections"),
                        format!("must be between 1 and 1000000, got {limit}"),
                    );
                    None
                }
            });
        let parsed = url.as_deref().and_then(|url| match parse_backend_url(url) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                errors.push(section.key_path("url"), reason);
                None
            }
        });
        if let (Some(_), Some((_, _, false))) = (&server_name, &parsed) {
            errors.push(
                section.key_path("server_name"),
                "only an https:// backend has a TLS server name; drop it or make the url https://",
            );
        }
        let id_key = section.key_path("id");
        section.finish(errors);
        let (Some(url), Some((host, port, tls))) = (url, parsed) else {
            continue;
        };
        let mut backend = BackendConfig {
            id: String::new(),
            url,
            host,
            port,
            weight,
            drain,
            healthcheck,
            tags,
            max_connections,
            tls,
            server_name,
        };
        backend.id = id.unwrap_or_else(|| backend.authority());
        if !ids.insert(backend.id.clone()) {
            errors.push(
                id_key,
                format!(
                    "duplicate backend id {:?} (give each backend a distinct url or id)",
                    backend.id
                ),
            );
        }
        backends.push(backend);
    }
    backends
}

/// Splits `http://host:port[/]` or `https://host:port[/]` into host, port (default 80 or 443) and whether it is
/// TLS.
fn parse_backend_url(url: &str) -> Result<(String, u16, bool), String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    let default_port = if tls { "443" } else { "80" };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('?') || authority.contains('@') {
        return Err(format!(
            "{url:?}: only http://host:port is supported (no path, query or user info)"
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => default_port,
            None => return Err(format!("{url:?}: expected :port after ]")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{url:?}: port must be a number between 1 and 65535"))?;
    Ok((host.to_string(), port, tls))
}

fn balancer(top: &mut Section, errors: &mut ConfigErrors) -> BalancerConfig {
    let mut section = top.section("balancer", errors);
    let algorithm = section.choice("algorithm", Algorithm::RoundRobin, errors);
    let hash_method = section.choice("hash_method", HashMethod::Maglev, errors);
    let listed = section.optional::<String>("hash_key", errors);
    let hash_key = match listed.as_deref().map(HashKey::parse) {
        None => HashKey::ClientIp,
        Some(Ok(key)) => key,
        Some(Err(reason)) => {
            errors.push(section.key_path("hash_key"), reason);
            HashKey::ClientIp
        }
    };
    if algorithm == Algorithm::IpHash && hash_key != HashKey::ClientIp {
        errors.push(
            section.key_path("hash_key"),
            "ip_hash always hashes the client address; use algorithm = \"consistent_hash\" for another key",
        );
    }
    let dynamic_weights = dynamic_weights(&mut section, errors);
    let sticky = sticky(&mut section, errors);
    section.finish(errors);
    BalancerConfig {
        algorithm,
        hash_key,
        hash_method,
        dynamic_weights,
        sticky,
    }
}

fn dynamic_weights(balancer: &mut Section, errors: &mut ConfigErrors) -> DynamicWeightsConfig {
    let mut section = balancer.section("dynamic_weights", errors);
    let config = DynamicWeightsConfig {
        enabled: section.or("enabled", false, errors),
        decay: section.positive_duration("decay", Duration::from_secs(10), errors),
        latency_slack: section.or("latency_slack", Duration::from_millis(5), errors),
        min_share: section.or("min_share", 0.05, errors),
    };
    if !(0.01..=1.0).contains(&config.min_share) {
        errors.push(
            section.key_path("min_share"),
            format!("must be between 0.01 and 1.0, got {}", config.min_share),
        );
    }
    if config.decay < Duration::from_millis(100) {
        errors.push(section.key_path("decay"), "must be at least 100ms");
    }
    section.finish(errors);
    config
}

/// Browsers keep a cookie at most 400 days (RFC 6265bis); a longer `Max-Age` would silently be cut.
const MAX_STICKY_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

fn sticky(balancer: &mut Section, errors: &mut ConfigErrors) -> StickyConfig {
    let mut section = balancer.section("sticky", errors);
    let config = StickyConfig {
        enabled: section.or("enabled", false, errors),
        cookie: section.or("cookie", "corelb_srv".to_string(), errors),
        ttl: optional_positive(&mut section, "ttl", errors),
        path: section.or("path", "/".to_string(), errors),
        domain: section.optional::<String>("domain", errors),
        secure: section.or("secure", false, errors),
        http_only: section.or("http_only", true, errors),
        same_site: section.choice("same_site", SameSite::Lax, errors),
        secret_file: section.optional::<String>("secret_file", errors).map(PathBuf::from),
    };
    if !is_cookie_token(&config.cookie) {
        errors.push(
            section.key_path("cookie"),
            format!(
                "{:?} is not a cookie name: 1 to 64 letters, digits or !#$%&'*+-.^_`|~",
                config.cookie
            ),
        );
    }
    if config.ttl.is_some_and(|ttl| ttl > MAX_STICKY_TTL) {
        errors.push(section.key_path("ttl"), "browsers keep a cookie at most 400 days");
    }
    let attribute_safe = |text: &str| text.bytes().all(|byte| byte.is_ascii_graphic() && byte != b';');
    if !config.path.starts_with('/') || !attribute_safe(&config.path) {
        errors.push(
            section.key_path("path"),
            format!(
                "{:?} must start with / and hold no spaces, controls or ';'",
                config.path
            ),
        );
    }
    if let Some(domain) = &config.domain {
        let valid = !domain.is_empty()
            && domain
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-');
        if !valid {
            errors.push(section.key_path("domain"), format!("{domain:?} is not a host name"));
        }
    }
    if config.same_site == SameSite::None && !config.secure {
        errors.push(
            section.key_path("same_site"),
            "\"none\" needs secure = true (browsers refuse SameSite=None without Secure)",
        );
    }
    section.finish(errors);
    config
}

/// An RFC 6265 cookie name (an RFC 9110 token), at most 64 bytes.
fn is_cookie_token(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

fn timeouts(top: &mut Section, errors: &mut ConfigErrors) -> Timeouts {
    let mut section = top.section("timeouts", errors);
    let timeouts = Timeouts {
        connect: section.positive_duration("connect", Duration::from_secs(2), errors),
        upstream_response: section.positive_duration("upstream_response", Duration::from_secs(30), errors),
        client_header: section.positive_duration("client_header", Duration::from_secs(10), errors),
        client_idle: section.positive_duration("client_idle", Duration::from_secs(60), errors),
        client_body: section.positive_duration("client_body", Duration::from_secs(10), errors),
        request: section.positive_duration("request", Duration::from_secs(60), errors),
        per_try: optional_positive(&mut section, "per_try", errors),
    };
    section.finish(errors);
    timeouts
}

/// A duration that may be absent but, when given, is strictly positive.
fn optional_positive(section: &mut Section, key: &'static str, errors: &mut ConfigErrors) -> Option<Duration> {
    let value = section.optional::<Duration>(key, errors)?;
    if value.is_zero() {
        errors.push(section.key_path(key), "must be greater than zero");
        return None;
    }
    Some(value)
}

fn retries(top: &mut Section, errors: &mut ConfigErrors) -> RetriesConfig {
    let mut section = top.section("retries", errors);
    let config = RetriesConfig {
        on_status: five_hundreds(&mut section, "on_status", errors),
        backoff: section.or("backoff", Duration::from_millis(25), errors),
        backoff_max: section.or("backoff_max", Duration::from_millis(250), errors),
        budget_ratio: section.or("budget_ratio", 0.2, errors),
        budget_min_per_second: section.or("budget_min_per_second", 10.0, errors),
        budget_window: section.positive_duration("budget_window", Duration::from_secs(10), errors),
    };
    if config.backoff > config.backoff_max {
        errors.push(section.key_path("backoff"), "must not be longer than backoff_max");
    }
    if !(0.0..=10.0).contains(&config.budget_ratio) {
        errors.push(
            section.key_path("budget_ratio"),
            format!("must be between 0.0 and 10.0, got {}", config.budget_ratio),
        );
    }
    if !(0.0..=1e6).contains(&config.budget_min_per_second) {
        errors.push(
            section.key_path("budget_min_per_second"),
            format!("must be between 0 and 1000000, got {}", config.budget_min_per_second),
        );
    }
    section.finish(errors);
    config
}

fn upstream(top: &mut Section, errors: &mut ConfigErrors) -> UpstreamConfig {
    let mut section = top.section("upstream", errors);
    let upstream = UpstreamConfig {
        max_idle_per_backend: section.integer_in("max_idle_per_backend", 128, 0, 100_000, errors) as usize,
        idle_timeout: section.positive_duration("idle_timeout", Duration::from_secs(60), errors),
        max_connect_attempts: section.integer_in("max_connect_attempts", 3, 1, 100, errors) as u32,
        fail_timeout: section.positive_duration("fail_timeout", Duration::from_secs(10), errors),
        slow_start: section.or("slow_start", Duration::ZERO, errors),
        max_connections_per_backend: section.integer_in("max_connections_per_backend", 256, 1, 1_000_000, errors)
            as usize,
        capacity_queue: section.integer_in("capacity_queue", 1024, 0, 1_000_000, errors) as usize,
        capacity_queue_timeout: section.positive_duration("capacity_queue_timeout", Duration::from_secs(1), errors),
        tls: upstream_tls(&mut section, errors),
    };
    section.finish(errors);
    upstream
}

fn upstream_tls(upstream: &mut Section, errors: &mut ConfigErrors) -> UpstreamTlsConfig {
    let mut section = upstream.section("tls", errors);
    let config = UpstreamTlsConfig {
        ca: section.optional::<String>("ca", errors).map(PathBuf::from),
        cert: section.optional::<String>("cert", errors).map(PathBuf::from),
        key: section.optional::<String>("key", errors).map(PathBuf::from),
        insecure_skip_verify: section.or("insecure_skip_verify", false, errors),
    };
    if config.cert.is_some() != config.key.is_some() {
        let missing = if config.cert.is_some() { "key" } else { "cert" };
        errors.push(
            section.key_path(missing),
            "a client certificate for backends needs both cert and key",
        );
    }
    section.finish(errors);
    config
}

fn limits(top: &mut Section, errors: &mut ConfigErrors) -> Limits {
    let mut section = top.section("limits", errors);
    let limits = Limits {
        max_header_bytes: section.integer_in("max_header_bytes", 16 * 1024, 1024, 1024 * 1024, errors) as usize,
        max_request_line: section.integer_in("max_request_line", 8 * 1024, 256, 1024 * 1024, errors) as usize,
        max_headers: section.integer_in("max_headers", 100, 8, 1000, errors) as usize,
        max_body_bytes: section.integer_in("max_body_bytes", 1 << 30, 0, i64::MAX, errors) as u64,
        min_body_rate: section.integer_in("min_body_rate", 1024, 1, 1 << 40, errors) as u64,
    };
    if limits.max_request_line > limits.max_header_bytes {
        errors.push(
            section.key_path("max_request_line"),
            format!(
                "must not exceed limits.max_header_bytes ({}), got {}",
                limits.max_header_bytes, limits.max_request_line
            ),
        );
    }
    section.finish(errors);
    limits
}

fn healthcheck(top: &mut Section, errors: &mut ConfigErrors) -> HealthCheckConfig {
    let mut section = top.section("healthcheck", errors);
    let config = HealthCheckConfig {
        enabled: section.or("enabled", false, errors),
        interval: section.positive_duration("interval", Duration::from_secs(5), errors),
        timeout: section.positive_duration("timeout", Duration::from_secs(2), errors),
        path: section.or("path", "/health".to_string(), errors),
        method: section.or("method", "GET".to_string(), errors),
        host: section.optional::<String>("host", errors),
        expected_status: expected_status(&mut section, errors),
        healthy_threshold: section.integer_in("healthy_threshold", 2, 1, 100, errors) as u32,
        unhealthy_threshold: section.integer_in("unhealthy_threshold", 3, 1, 100, errors) as u32,
        jitter: section.or("jitter", 0.15, errors),
        panic_mode: section.choice("panic_mode", PanicMode::FailOpen, errors),
    };
    check_probe_path(&section, "path", &config.path, errors);
    if !matches!(config.method.as_str(), "GET" | "HEAD") {
        errors.push(
            section.key_path("method"),
            format!("must be \"GET\" or \"HEAD\", got {:?}", config.method),
        );
    }
    if let Some(host) = &config.host {
        check_probe_host(&section, "host", host, errors);
    }
    if !(0.0..=0.5).contains(&config.jitter) {
        errors.push(
            section.key_path("jitter"),
            format!(
                "must be between 0.0 and 0.5 (a fraction of the interval), got {}",
                config.jitter
            ),
        );
    }
    if config.enabled && config.timeout > config.interval {
        errors.push(
            section.key_path("timeout"),
            format!(
                "must not be longer than interval ({}), so one probe per backend is in flight at a time",
                super::duration::format_duration(config.interval)
            ),
        );
    }
    section.finish(errors);
    config
}

/// `expected_status`: `"200-399"` or one status such as `"200"`.
fn expected_status(section: &mut Section, errors: &mut ConfigErrors) -> (u16, u16) {
    const DEFAULT: (u16, u16) = (200, 399);
    let Some(text) = section.optional::<String>("expected_status", errors) else {
        return DEFAULT;
    };
    let (low, high) = text.split_once('-').unwrap_or((&text, &text));
    match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
        (Ok(low), Ok(high)) if (100..=599).contains(&low) && (low..=599).contains(&high) => (low, high),
        _ => {
            errors.push(
                section.key_path("expected_status"),
                format!("must be a status or a range of statuses such as \"200-399\", got {text:?}"),
            );
            DEFAULT
        }
    }
}

fn check_probe_path(section: &Section, key: &str, path: &str, errors: &mut ConfigErrors) {
    if !path.starts_with('/') || path.bytes().any(|byte| byte <= b' ' || byte == 0x7f) {
        errors.push(
            section.key_path(key),
            format!("must start with / and hold no spaces or control characters, got {path:?}"),
        );
    }
}

fn check_probe_host(section: &Section, key: &str, host: &str, errors: &mut ConfigErrors) {
    if host.is_empty() || host.bytes().any(|byte| byte <= b' ' || byte == 0x7f) {
        errors.push(
            section.key_path(key),
            format!("must be a host name with no spaces or control characters, got {host:?}"),
        );
    }
}

/// `[[backends]] tags = { name = "value", ... }`: free-form metadata, strings only, bounded in count and length.
fn backend_tags(section: &mut Section, errors: &mut ConfigErrors) -> BTreeMap<String, String> {
    let path = section.key_path("tags");
    let mut tags = BTreeMap::new();
    let Some(value) = section.optional::<toml::Value>("tags", errors) else {
        return tags;
    };
    let Some(table) = value.as_table() else {
        errors.push(path, "must be a table of strings, like { zone = \"eu-1\" }");
        return tags;
    };
    if table.len() > MAX_TAGS {
        errors.push(path.clone(), format!("at most {MAX_TAGS} tags, got {}", table.len()));
    }
    for (name, value) in table {
        let key = format!("{path}.{name}");
        match value.as_str() {
            _ if name.is_empty() || name.len() > MAX_TAG_NAME => {
                errors.push(key, format!("a tag name must be 1 to {MAX_TAG_NAME} bytes"))
            }
            Some(text) if text.len() <= MAX_TAG_VALUE => {
                tags.insert(name.clone(), text.to_string());
            }
            Some(_) => errors.push(key, format!("must be at most {MAX_TAG_VALUE} bytes")),
            None => errors.push(key, "must be a string"),
        }
    }
    tags
}

/// `[[backends]] healthcheck = { ... }`: the backend's own health check settings.
fn backend_healthcheck(section: &mut Section, errors: &mut ConfigErrors) -> BackendHealthCheck {
    let mut own = section.section("healthcheck", errors);
    let check = BackendHealthCheck {
        enabled: own.optional("enabled", errors),
        path: own.optional::<String>("path", errors),
        interval: own.optional("interval", errors),
        timeout: own.optional("timeout", errors),
        host: own.optional::<String>("host", errors),
    };
    if let Some(path) = &check.path {
        check_probe_path(&own, "path", path, errors);
    }
    if let Some(host) = &check.host {
        check_probe_host(&own, "host", host, errors);
    }
    for (key, value) in [("interval", check.interval), ("timeout", check.timeout)] {
        if value.is_some_and(|value| value.is_zero()) {
            errors.push(own.key_path(key), "must be greater than zero");
        }
    }
    own.finish(errors);
    check
}

fn tls(top: &mut Section, errors: &mut ConfigErrors) -> TlsConfig {
    let mut section = top.section("tls", errors);
    if section.optional::<bool>("enabled", errors) == Some(true) {
        errors.push(
            section.key_path("enabled"),
            "TLS is switched on per frontend: add tls = {} to the [[frontends]] entry that serves it (its cert, \
             key, ca and client_auth default to the ones in [tls]), and remove enabled from [tls]",
        );
    }
    let config = TlsConfig {
        cert: section.optional::<String>("cert", errors).map(PathBuf::from),
        key: section.optional::<String>("key", errors).map(PathBuf::from),
        ca: section.optional::<String>("ca", errors).map(PathBuf::from),
        client_auth: section.choice("client_auth", ClientAuth::None, errors),
        session_tickets: section.or("session_tickets", true, errors),
        ticket_rotation: section.positive_duration("ticket_rotation", Duration::from_secs(6 * 3600), errors),
        watch: section.or("watch", Duration::ZERO, errors),
    };
    section.finish(errors);
    config
}

fn ratelimit(top: &mut Section, errors: &mut ConfigErrors) -> RateLimitConfig {
    let mut section = top.section("ratelimit", errors);
    let rate = positive_rate(&mut section, 1000.0, errors);
    let blocks = section.or("allow", Vec::<String>::new(), errors);
    // Each entry on its own, so that every bad one is named, not only the first.
    let mut allow = Vec::with_capacity(blocks.len());
    for (index, block) in blocks.iter().enumerate() {
        match Network::parse(block) {
            Ok(network) => allow.push(network),
            Err(reason) => errors.push(format!("{}[{index}]", section.key_path("allow")), reason),
        }
    }
    let mut overrides = Vec::new();
    for mut item in section.array_of_tables("overrides", errors) {
        let frontend = item.required::<String>("frontend", errors);
        let rate = positive_rate(&mut item, rate, errors);
        let override_config = RateLimitOverride {
            frontend: frontend.unwrap_or_default(),
            enabled: item.or("enabled", true, errors),
            rate,
            burst: item.integer_in("burst", 100, 1, 10_000_000, errors) as u32,
        };
        item.finish(errors);
        overrides.push(override_config);
    }
    let config = RateLimitConfig {
        enabled: section.or("enabled", false, errors),
        rate,
        burst: section.integer_in("burst", 100, 1, 10_000_000, errors) as u32,
        algorithm: section.choice("algorithm", RateLimitAlgorithm::TokenBucket, errors),
        scope: section.choice("scope", RateLimitScope::Global, errors),
        max_clients: section.integer_in("max_clients", 10_000, 1, 10_000_000, errors) as usize,
        allow,
        overrides,
    };
    section.finish(errors);
    config
}

fn positive_rate(section: &mut Section, default: f64, errors: &mut ConfigErrors) -> f64 {
    let rate = section.or("rate", default, errors);
    if !(rate > 0.0 && rate.is_finite()) {
        errors.push(
            section.key_path("rate"),
            format!("must be a positive number, got {rate}"),
        );
        return default;
    }
    rate
}

fn circuitbreaker(top: &mut Section, errors: &mut ConfigErrors) -> CircuitBreakerConfig {
    let mut section = top.section("circuitbreaker", errors);
    let config = CircuitBreakerConfig {
        enabled: section.or("enabled", false, errors),
        threshold: section.integer_in("threshold", 5, 1, 10_000, errors) as u32,
        timeout: section.positive_duration("timeout", Duration::from_secs(30), errors),
        max_half_open: section.integer_in("max_half_open", 1, 1, 10_000, errors) as u32,
        failure_statuses: five_hundreds(&mut section, "failure_statuses", errors),
    };
    section.finish(errors);
    config
}

fn outlier_detection(top: &mut Section, errors: &mut ConfigErrors) -> OutlierConfig {
    let mut section = top.section("outlier_detection", errors);
    let listed = section.optional::<toml::Value>("failure_statuses", errors).is_some();
    let mut config = OutlierConfig {
        enabled: section.or("enabled", false, errors),
        consecutive_errors: section.integer_in("consecutive_errors", 5, 0, 10_000, errors) as u32,
        failure_ratio: section.or("failure_ratio", 0.5, errors),
        min_requests: section.integer_in("min_requests", 20, 1, 10_000_000, errors) as u32,
        window: section.positive_duration("window", Duration::from_secs(10), errors),
        base_ejection_time: section.positive_duration("base_ejection_time", Duration::from_secs(30), errors),
        max_ejection_time: section.positive_duration("max_ejection_time", Duration::from_secs(300), errors),
        max_ejection_percent: section.integer_in("max_ejection_percent", 50, 0, 100, errors) as u32,
        jitter: section.or("jitter", 0.1, errors),
        failure_statuses: five_hundreds(&mut section, "failure_statuses", errors),
    };
    if !listed {
        config.failure_statuses = vec![502, 503, 504];
    }
    if !(0.0..=1.0).contains(&config.failure_ratio) {
        errors.push(
            section.key_path("failure_ratio"),
            format!("must be between 0.0 and 1.0, got {}", config.failure_ratio),
        );
    }
    if !(0.0..=1.0).contains(&config.jitter) {
        errors.push(
            section.key_path("jitter"),
            format!("must be between 0.0 and 1.0, got {}", config.jitter),
        );
    }
    if config.base_ejection_time > config.max_ejection_time {
        errors.push(
            section.key_path("base_ejection_time"),
            "must not be longer than max_ejection_time",
        );
    }
    if config.window < Duration::from_millis(100) {
        errors.push(section.key_path("window"), "must be at least 100ms");
    }
    section.finish(errors);
    config
}

/// A list of 5xx statuses (a 4xx is the client's doing, never the backend's failure).
fn five_hundreds(section: &mut Section, key: &'static str, errors: &mut ConfigErrors) -> Vec<u16> {
    let listed = section.or(key, Vec::<i64>::new(), errors);
    let mut statuses = Vec::with_capacity(listed.len());
    for (index, status) in listed.into_iter().enumerate() {
        match u16::try_from(status) {
            Ok(status) if (500..600).contains(&status) => statuses.push(status),
            _ => errors.push(
                format!("{}[{index}]", section.key_path(key)),
                format!("must be a 5xx status (500 to 599), got {status}"),
            ),
        }
    }
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

fn logging(top: &mut Section, errors: &mut ConfigErrors) -> LoggingConfig {
    let mut section = top.section("logging", errors);
    let config = LoggingConfig {
        level: section.choice("level", LogLevel::Info, errors),
        format: section.choice("format", LogFormat::Text, errors),
    };
    section.finish(errors);
    config
}

fn metrics(top: &mut Section, errors: &mut ConfigErrors) -> MetricsConfig {
    let mut section = top.section("metrics", errors);
    let config = MetricsConfig {
        enabled: section.or("enabled", true, errors),
        address: section.or("address", IpAddr::V4(Ipv4Addr::LOCALHOST), errors),
        port: section.integer_in("port", 9090, 0, 65535, errors) as u16,
    };
    section.finish(errors);
    config
}

fn control(top: &mut Section, errors: &mut ConfigErrors) -> ControlConfig {
    let mut section = top.section("control", errors);
    let socket = section.or("socket", super::DEFAULT_CONTROL_SOCKET.to_string(), errors);
    if socket.is_empty() {
        errors.push(section.key_path("socket"), "must not be empty");
    }
    let history = section.integer_in("history", 20, 1, 1000, errors) as usize;
    section.finish(errors);
    ControlConfig {
        socket: PathBuf::from(socket),
        history,
    }
}

fn access_log(top: &mut Section, errors: &mut ConfigErrors) -> AccessLogConfig {
    let mut section = top.section("access_log", errors);
    let enabled = section.or("enabled", false, errors);
    let format = section.choice("format", AccessLogFormat::Json, errors);
    let path = section.or("path", "stderr".to_string(), errors);
    if path.is_empty() {
        errors.push(section.key_path("path"), "must be \"stderr\" or a file path");
    }
    section.finish(errors);
    AccessLogConfig {
        enabled,
        format,
        path: (path != "stderr").then(|| PathBuf::from(path)),
    }
}

fn health_endpoint(top: &mut Section, errors: &mut ConfigErrors) -> HealthEndpointConfig {
    let mut section = top.section("health_endpoint", errors);
    let enabled = section.or("enabled", true, errors);
    let path = section.or("path", "/health".to_string(), errors);
    if !path.starts_with('/') {
        errors.push(section.key_path("path"), format!("must start with /, got {path:?}"));
    }
    section.finish(errors);
    HealthEndpointConfig { enabled, path }
}

fn admin(top: &mut Section, errors: &mut ConfigErrors) -> AdminConfig {
    let mut section = top.section("admin", errors);
    let enabled = section.or("enabled", false, errors);
    let address = section.or("address", IpAddr::V4(Ipv4Addr::LOCALHOST), errors);
    let port = section.integer_in("port", 9091, 0, 65535, errors) as u16;
    let token = section.optional::<String>("token", errors);
    if token.as_deref() == Some("") {
        errors.push(
            section.key_path("token"),
            "must not be empty (remove the key for no token)",
        );
    }
    if enabled && token.is_none() {
        // Loopback too: any local user could otherwise add backends or read the config.
        errors.push(
            section.key_path("token"),
            format!("is required when the admin API is enabled (on every address, {address} included)"),
        );
    }
    section.finish(errors);
    AdminConfig {
        enabled,
        listen: SocketAddr::new(address, port),
        token,
    }
}

/// Two listeners on one address and port cannot both work; port 0 asks the kernel for a fresh port each time.
fn check_port_clashes(
    frontends: &[FrontendConfig],
    metrics: &MetricsConfig,
    admin: &AdminConfig,
    errors: &mut ConfigErrors,
) {
    let mut seen: Vec<(SocketAddr, String)> = Vec::new();
    let mut claim = |listen: SocketAddr, key: String, errors: &mut ConfigErrors| {
        if listen.port() == 0 {
            return;
        }
        let clash = seen.iter().find(|(other, _)| {
            other.port() == listen.port()
                && (other.ip() == listen.ip() || other.ip().is_unspecified() || listen.ip().is_unspecified())
        });
        if let Some((_, other_key)) = clash {
            errors.push(key, format!("port {} is already used by {other_key}", listen.port()));
        } else {
            seen.push((listen, key));
        }
    };
    for (index, frontend) in frontends.iter().enumerate() {
        claim(frontend.listen, format!("frontends[{index}].port"), errors);
    }
    if metrics.enabled {
        claim(
            SocketAddr::new(metrics.address, metrics.port),
            "metrics.port".to_string(),
            errors,
        );
    }
    if admin.enabled {
        claim(admin.listen, "admin.port".to_string(), errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[frontends]]\nport = 8080\n[[backends]]\nurl = \"http://127.0.0.1:9001\"\n";

    #[test]
    fn minimal_config_takes_defaults() {
        let config = parse_config(MINIMAL).unwrap();
        assert_eq!(config.frontends[0].listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.backends[0].id, "127.0.0.1:9001");
        assert_eq!(config.backends[0].weight, 1);
        assert_eq!(config.server.workers, Workers::Auto);
        assert_eq!(config.balancer.algorithm, Algorithm::RoundRobin);
        assert_eq!(config.timeouts.connect, Duration::from_secs(2));
    }

    #[test]
    fn reports_every_error_at_once() {
        let text = "[server]\nworkers = 0\nio_driver = \"kqueue\"\n\
            [[frontends]]\nport = 70000\n\
            [[backends]]\nurl = \"http://127.0.0.1:9001\"\n\
            [[backends]]\nurl = \"ftp://x\"\n\
            [[backends]]\nurl = \"http://127.0.0.1:9003\"\nweight = 0\nwieght = 2\n\
            [timeouts]\nconnect = \"10\"\n";
        let errors = parse_config(text).unwrap_err();
        let text = errors.to_string();
        for expected in [
            "server.workers: must be \"auto\" or a number between 1 and 1024, got 0",
            "server.io_driver: must be one of \"auto\", \"io_uring\", \"epoll\", got \"kqueue\"",
            "frontends[0].port: must be between 0 and 65535, got 70000",
            "backends[1].url: \"ftp://x\" must start with http://",
            "backends[2].weight: must be between 1 and 1000, got 0",
            "backends[2].wieght: unknown key",
            "timeouts.connect: missing unit",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(errors.len(), 7, "{text}");
    }

    #[test]
    fn refuses_configs_that_serve_nothing() {
        let text = parse_config("").unwrap_err().to_string();
        assert!(text.contains("frontends: at least one"), "{text}");
        assert!(text.contains("backends: at least one"), "{text}");
    }

    #[test]
    fn refuses_port_clashes_and_duplicates() {
        let text = "[[frontends]]\nname = \"a\"\nport = 8080\n[[frontends]]\nname = \"a\"\naddress = \"127.0.0.1\"\nport = 8080\n\
            [[backends]]\nurl = \"http://127.0.0.1:9001\"\n[[backends]]\nurl = \"http://127.0.0.1:9001/\"\n";
        let text = parse_config(text).unwrap_err().to_string();
        assert!(
            text.contains("frontends[1].name: duplicate frontend name \"a\""),
            "{text}"
        );
        assert!(
            text.contains("frontends[1].port: port 8080 is already used by frontends[0].port"),
            "{text}"
        );
        assert!(text.contains("backends[1].id: duplicate backend id"), "{text}");
    }

    #[test]
    fn reports_syntax_errors() {
        let text = parse_config("[[frontends]\n").unwrap_err().to_string();
        assert!(text.starts_with("TOML syntax error"), "{text}");
    }

    #[test]
    fn the_global_tls_switch_is_refused_with_the_way_to_the_per_frontend_one() {
        let text = format!("{MINIMAL}[tls]\nenabled = true\n");
        let text = parse_config(&text).unwrap_err().to_string();
        assert!(
            text.contains("tls.enabled: TLS is switched on per frontend: add tls = {}"),
            "{text}"
        );
        // The old `enabled = false` still reads.
        assert!(parse_config(&format!("{MINIMAL}[tls]\nenabled = false\n")).is_ok());
    }

    #[test]
    fn a_tls_frontend_reads_its_certificates_and_takes_the_rest_from_tls() {
        let text = "[[frontends]]\nport = 8080\n[[frontends]]\nname = \"secure\"\nport = 8443\n\
                    tls = { certificates = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = \"b.pem\", key = \"b.key\" }], \
                    client_identity_header = \"X-Client-Subject\", strict_sni = true, min_version = \"1.3\" }\n\
                    [[frontends]]\nname = \"defaults\"\nport = 9443\ntls = {}\n\
                    [[backends]]\nurl = \"http://127.0.0.1:9001\"\n\
                    [tls]\ncert = \"d.pem\"\nkey = \"d.key\"\nca = \"ca.pem\"\nclient_auth = \"optional\"\n";
        let config = parse_config(text).unwrap();
        assert_eq!(config.frontends[0].tls, None);
        assert_eq!(config.frontends[0].scheme(), "http");
        let secure = config.frontends[1].tls.as_ref().unwrap();
        assert_eq!(config.frontends[1].scheme(), "https");
        let certs: Vec<&str> = secure
            .certificates
            .iter()
            .map(|files| files.cert.to_str().unwrap())
            .collect();
        assert_eq!(certs, ["a.pem", "b.pem"]);
        assert!(secure.strict_sni);
        assert_eq!(secure.min_version, TlsVersion::Tls13);
        assert_eq!(secure.handshake_timeout, Duration::from_secs(10));
        assert_eq!(secure.client_identity_header.as_deref(), Some("X-Client-Subject"));
        assert_eq!(secure.client_auth, ClientAuth::Optional);
        let defaults = config.frontends[2].tls.as_ref().unwrap();
        assert_eq!(defaults.certificates[0].cert, PathBuf::from("d.pem"));
        assert_eq!(defaults.client_ca, Some(PathBuf::from("ca.pem")));
        assert!(!defaults.strict_sni);
        assert_eq!(defaults.min_version, TlsVersion::Tls12);
        // Written back and read again, it is the same config.
        assert_eq!(parse_config(&crate::config::to_toml(&config)).unwrap(), config);
    }

    #[test]
    fn a_tls_frontend_that_cannot_serve_is_refused_by_key() {
        for (tls, expected) in [
            (
                "{}",
                "frontends[0].tls.certificates: a TLS frontend needs a certificate",
            ),
            ("{ cert = \"a.pem\" }", "frontends[0].tls.key: a cert needs its key"),
            (
                "{ cert = \"a.pem\", key = \"a.key\", client_auth = \"required\" }",
                "frontends[0].tls.client_ca: client_auth = \"required\" needs the CA bundle",
            ),
            (
                "{ cert = \"a.pem\", key = \"a.key\", min_version = \"1.1\" }",
                "frontends[0].tls.min_version: must be one of \"1.2\", \"1.3\"",
            ),
            (
                "{ cert = \"a.pem\", key = \"a.key\", client_identity_header = \"X-Forwarded-For\" }",
                "frontends[0].tls.client_identity_header: \"X-Forwarded-For\" is a header corelb sets",
            ),
            (
                "{ cert = \"a.pem\", key = \"a.key\", client_identity_header = \"bad name\" }",
                "is not a header name",
            ),
            (
                "{ cert = \"a.pem\", key = \"a.key\", handshake_timeout = \"0s\" }",
                "handshake_timeout",
            ),
            (
                "{ cert = \"a.pem\", key = \"a.key\", ciphers = \"ALL\" }",
                "frontends[0].tls.ciphers: unknown key",
            ),
        ] {
            let text =
                format!("[[frontends]]\nport = 8443\ntls = {tls}\n[[backends]]\nurl = \"http://127.0.0.1:9001\"\n");
            let errors = parse_config(&text).unwrap_err().to_string();
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }
    }

    #[test]
    fn https_backends_take_port_443_a_server_name_and_upstream_tls() {
        let text = "[[frontends]]\nport = 8080\n[[backends]]\nurl = \"https://api.internal\"\n\
                    [[backends]]\nurl = \"https://10.0.0.2:8443\"\nserver_name = \"api.internal\"\n\
                    [upstream.tls]\nca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n";
        let config = parse_config(text).unwrap();
        let (named, addressed) = (&config.backends[0], &config.backends[1]);
        assert!(named.tls && addressed.tls);
        assert_eq!((named.port, named.tls_name()), (443, "api.internal"));
        assert_eq!((addressed.port, addressed.tls_name()), (8443, "api.internal"));
        let tls = &config.upstream.tls;
        assert_eq!(tls.ca.as_deref(), Some(Path::new("ca.pem")));
        assert!(tls.cert.is_some() && tls.key.is_some() && !tls.insecure_skip_verify);
        let rendered = crate::config::to_toml(&config);
        assert_eq!(parse_config(&rendered).unwrap(), config, "{rendered}");
    }

    #[test]
    fn bad_https_backend_settings_are_refused_by_key() {
        for (extra, key, reason) in [
            (
                "[[backends]]\nurl = \"ftp://a:21\"\n",
                "backends[1].url",
                "must start with http:// or https://",
            ),
            (
                "[[backends]]\nurl = \"https://a\"\nserver_name = \"not a name!\"\n",
                "backends[1].server_name",
                "is not a DNS name or an IP address",
            ),
            (
                "[[backends]]\nurl = \"http://a:80\"\nserver_name = \"a\"\n",
                "backends[1].server_name",
                "only an https:// backend",
            ),
            (
                "[upstream.tls]\ncert = \"client.pem\"\n",
                "upstream.tls.key",
                "needs both cert and key",
            ),
        ] {
            let text = parse_config(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
            assert!(text.contains(key) && text.contains(reason), "{extra}: {text}");
        }
    }

    #[test]
    fn refuses_bad_health_check_and_breaker_settings_by_key() {
        let text = format!(
            "{MINIMAL}healthcheck = {{ path = \"no-slash\", interval = \"0s\" }}\n[healthcheck]\nenabled = true\n\
             interval = \"1s\"\ntimeout = \"2s\"\nmethod = \"POST\"\nexpected_status = \"2xx\"\njitter = 0.9\n\
             panic_mode = \"maybe\"\n[circuitbreaker]\nfailure_statuses = [404]\n"
        );
        let errors = parse_config(&text).unwrap_err().to_string();
        for expected in [
            "backends[0].healthcheck.path: must start with /",
            "backends[0].healthcheck.interval: must be greater than zero",
            "healthcheck.timeout: must not be longer than interval",
            "healthcheck.method: must be \"GET\" or \"HEAD\"",
            "healthcheck.expected_status: must be a status or a range",
            "healthcheck.jitter: must be between 0.0 and 0.5",
            "healthcheck.panic_mode: must be one of \"fail_open\", \"fail_closed\"",
            "circuitbreaker.failure_statuses[0]: must be a 5xx status",
        ] {
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }
    }

    #[test]
    fn outlier_detection_defaults_to_gateway_errors_and_refuses_bad_settings_by_key() {
        let config = parse_config(MINIMAL).unwrap();
        let outlier = &config.outlier_detection;
        assert!(!outlier.enabled);
        assert_eq!(outlier.failure_statuses, [502, 503, 504]);
        assert_eq!((outlier.consecutive_errors, outlier.max_ejection_percent), (5, 50));
        let text = format!(
            "{MINIMAL}[outlier_detection]\nfailure_ratio = 1.5\njitter = -0.1\nbase_ejection_time = \"10m\"\n\
             window = \"50ms\"\nmax_ejection_percent = 101\nfailure_statuses = [429]\n"
        );
        let errors = parse_config(&text).unwrap_err().to_string();
        for expected in [
            "outlier_detection.failure_ratio: must be between 0.0 and 1.0",
            "outlier_detection.jitter: must be between 0.0 and 1.0",
            "outlier_detection.base_ejection_time: must not be longer than max_ejection_time",
            "outlier_detection.window: must be at least 100ms",
            "outlier_detection.max_ejection_percent",
            "outlier_detection.failure_statuses[0]: must be a 5xx status",
        ] {
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }
    }

    #[test]
    fn dynamic_weights_are_off_by_default_and_refuse_bad_settings_by_key() {
        let config = parse_config(MINIMAL).unwrap();
        let dynamic = config.balancer.dynamic_weights;
        assert!(!dynamic.enabled);
        assert_eq!((dynamic.decay, dynamic.min_share), (Duration::from_secs(10), 0.05));
        let text = format!(
            "{MINIMAL}[balancer.dynamic_weights]\nenabled = true\nmin_share = 0\ndecay = \"10ms\"\nslack = \"1ms\"\n"
        );
        let errors = parse_config(&text).unwrap_err().to_string();
        for expected in [
            "balancer.dynamic_weights.min_share: must be between 0.01 and 1.0",
            "balancer.dynamic_weights.decay: must be at least 100ms",
            "balancer.dynamic_weights.slack",
        ] {
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }
    }

    #[test]
    fn hash_keys_are_read_and_bad_ones_refused_by_key() {
        let keyed = format!("{MINIMAL}[balancer]\nalgorithm = \"consistent_hash\"\nhash_key = \"cookie:sid\"\n");
        let config = parse_config(&keyed).unwrap();
        assert_eq!(config.balancer.hash_key, HashKey::Cookie("sid".into()));
        assert_eq!(config.balancer.hash_method, HashMethod::Maglev);
        assert_eq!(HashKey::parse("header:X-User"), Ok(HashKey::Header("x-user".into())));
        for (text, expected) in [
            (
                "algorithm = \"consistent_hash\"\nhash_key = \"header:\"",
                "balancer.hash_key: must be",
            ),
            (
                "algorithm = \"ip_hash\"\nhash_key = \"path\"",
                "balancer.hash_key: ip_hash always hashes",
            ),
            ("hash_method = \"ring\"", "balancer.hash_method: must be one of"),
        ] {
            let errors = parse_config(&format!("{MINIMAL}[balancer]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }
    }

    #[test]
    fn max_connections_is_bounded_rendered_back_and_split_exactly_over_workers() {
        let text = "[[frontends]]\nport = 0\n[[backends]]\nurl = \"http://127.0.0.1:9001\"\nmax_connections = 7\n\
                    [[backends]]\nurl = \"http://127.0.0.1:9002\"\n";
        let config = parse_config(text).unwrap();
        assert_eq!(config.backends[0].max_connections, Some(7));
        assert_eq!(config.backends[1].max_connections, None);
        let rendered = parse_config(&crate::config::to_toml(&config)).unwrap();
        assert_eq!(rendered.backends[0].max_connections, Some(7));
        for total in [1, 2, 3, 7, 64, 1000] {
            for workers in 1..=total.min(16) as usize {
                let shares: Vec<u32> = (0..workers)
                    .map(|worker| crate::config::capacity_share(total, worker, workers))
                    .collect();
                assert_eq!(shares.iter().sum::<u32>(), total, "{total} over {workers}: {shares:?}");
                let (least, most) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(most - least <= 1 && *least >= 1, "{total} over {workers}: {shares:?}");
            }
        }
        assert!(crate::config::capacity_below_workers(&config, 7).is_none());
        let (path, reason) = crate::config::capacity_below_workers(&config, 8).unwrap();
        assert_eq!(path, "backends[0].max_connections");
        assert!(reason.contains("fewer than the 8 workers"), "{reason}");
        let zero = text.replace("max_connections = 7", "max_connections = 0");
        let errors = parse_config(&zero).unwrap_err().to_string();
        assert!(
            errors.contains("backends[0].max_connections: must be between 1 and 1000000, got 0"),
            "{errors}"
        );
    }

    #[test]
    fn sticky_settings_are_read_rendered_back_and_bad_ones_refused_by_key() {
        let text = format!(
            "{MINIMAL}[balancer.sticky]\nenabled = true\ncookie = \"srv\"\nttl = \"2h\"\ndomain = \"example.com\"\n\
             secure = true\nsame_site = \"none\"\nsecret_file = \"/etc/corelb/sticky.key\"\n"
        );
        let config = parse_config(&text).unwrap();
        let sticky = &config.balancer.sticky;
        assert!(sticky.enabled && sticky.secure && sticky.http_only);
        assert_eq!(
            (sticky.cookie.as_str(), sticky.ttl),
            ("srv", Some(Duration::from_secs(7200)))
        );
        assert_eq!(sticky.same_site, SameSite::None);
        let rendered = parse_config(&crate::config::to_toml(&config)).unwrap();
        assert_eq!(rendered.balancer.sticky, *sticky);
        let bad = format!(
            "{MINIMAL}[balancer.sticky]\ncookie = \"a b\"\nttl = \"10000h\"\npath = \"x;y\"\ndomain = \"a/b\"\n\
             same_site = \"none\"\n"
        );
        let errors = parse_config(&bad).unwrap_err().to_string();
        for expected in [
            "balancer.sticky.cookie: \"a b\" is not a cookie name",
            "balancer.sticky.ttl: browsers keep a cookie at most 400 days",
            "balancer.sticky.path: \"x;y\" must start with /",
            "balancer.sticky.domain: \"a/b\" is not a host name",
            "balancer.sticky.same_site: \"none\" needs secure = true",
        ] {
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }
    }

    #[test]
    fn backend_tags_are_strings_and_bounded() {
        let text = "[[frontends]]\nport = 8080\n[[backends]]\nurl = \"http://127.0.0.1:9001\"\n\
                    tags = { zone = \"eu-1\", rack = \"r3\" }\n";
        let config = parse_config(text).unwrap();
        assert_eq!(config.backends[0].tags.get("zone").map(String::as_str), Some("eu-1"));
        assert_eq!(config.backends[0].tags.len(), 2);
        let rendered = parse_config(&crate::config::to_toml(&config)).unwrap();
        assert_eq!(
            rendered.backends[0].tags, config.backends[0].tags,
            "rendered and read back"
        );
        let bad = "[[frontends]]\nport = 8080\n[[backends]]\nurl = \"http://127.0.0.1:9001\"\n\
                   tags = { zone = 3 }\n[[backends]]\nurl = \"http://127.0.0.1:9002\"\ntags = \"eu\"\n";
        let errors = parse_config(bad).unwrap_err().to_string();
        for expected in [
            "backends[0].tags.zone: must be a string",
            "backends[1].tags: must be a table of strings",
        ] {
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }
    }

    #[test]
    fn parses_backend_urls() {
        assert_eq!(
            parse_backend_url("http://127.0.0.1:9001"),
            Ok(("127.0.0.1".into(), 9001, false))
        );
        assert_eq!(
            parse_backend_url("http://example.com/"),
            Ok(("example.com".into(), 80, false))
        );
        assert_eq!(parse_backend_url("http://[::1]:81"), Ok(("::1".into(), 81, false)));
        assert_eq!(
            parse_backend_url("https://api.test"),
            Ok(("api.test".into(), 443, true))
        );
        assert_eq!(parse_backend_url("https://[::1]:8443/"), Ok(("::1".into(), 8443, true)));
        assert!(parse_backend_url("http://h:0").is_err());
        assert!(parse_backend_url("http://h:1/path").is_err());
        assert!(parse_backend_url("ftp://h:1").is_err());
    }

    #[test]
    fn repository_config_is_valid() {
        let text = include_str!("../../config.toml");
        if let Err(errors) = parse_config(text) {
            panic!("config.toml is invalid:\n{errors}");
        }
    }
}
