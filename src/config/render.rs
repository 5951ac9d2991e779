//! A [`Config`] written back as TOML that [`parse_config`](super::parse_config) reads into the same `Config`, and a
//! one-line summary of what changed between two configs. Used by `config show`, the version history and reload logs.

use std::fmt::Write;

use super::duration::format_duration;
use super::names::Choice;
use super::*;

fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn path(path: &Option<PathBuf>) -> Option<String> {
    path.as_ref().map(|path| quote(&path.display().to_string()))
}

/// `key = "duration"` and a newline, or nothing when unset.
fn duration_line(key: &str, value: Option<std::time::Duration>) -> String {
    value.map_or(String::new(), |value| {
        format!("{key} = \"{}\"\n", format_duration(value))
    })
}

/// A frontend's `[frontends.tls]` table and its certificates.
fn frontend_tls(out: &mut String, tls: &FrontendTls) {
    let _ = writeln!(
        out,
        "[frontends.tls]\nstrict_sni = {}\nhandshake_timeout = \"{}\"\nmin_version = \"{}\"\nclient_auth = \"{}\"",
        tls.strict_sni,
        format_duration(tls.handshake_timeout),
        tls.min_version.name(),
        tls.client_auth.name()
    );
    if let Some(ca) = path(&tls.client_ca) {
        let _ = writeln!(out, "client_ca = {ca}");
    }
    if let Some(header) = &tls.client_identity_header {
        let _ = writeln!(out, "client_identity_header = {}", quote(header));
    }
    out.push('\n');
    for files in &tls.certificates {
        let _ = writeln!(
            out,
            "[[frontends.tls.certificates]]\ncert = {}\nkey = {}\n",
            quote(&files.cert.display().to_string()),
            quote(&files.key.display().to_string())
        );
    }
}

/// A backend's `tags = { ... }` line, empty when it has none.
fn backend_tags(tags: &std::collections::BTreeMap<String, String>) -> String {
    if tags.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = tags
        .iter()
        .map(|(name, value)| format!("{} = {}", quote(name), quote(value)))
        .collect();
    format!("\ntags = {{ {} }}", pairs.join(", "))
}

/// A backend's own health check line, empty when it has none.
fn backend_healthcheck(check: &BackendHealthCheck) -> String {
    if check.is_empty() {
        return String::new();
    }
    let mut keys = Vec::new();
    if let Some(enabled) = check.enabled {
        keys.push(format!("enabled = {enabled}"));
    }
    if let Some(path) = &check.path {
        keys.push(format!("path = {}", quote(path)));
    }
    if let Some(interval) = check.interval {
        keys.push(format!("interval = \"{}\"", format_duration(interval)));
    }
    if let Some(timeout) = check.timeout {
        keys.push(format!("timeout = \"{}\"", format_duration(timeout)));
    }
    if let Some(host) = &check.host {
        keys.push(format!("host = {}", quote(host)));
    }
    format!("\nhealthcheck = {{ {} }}", keys.join(", "))
}

/// Writes `config` as TOML.
/// What [`to_toml_redacted`] shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// [`to_toml`] for showing: secrets (the admin token) are replaced by [`REDACTED`]. Applying such a text back
/// would change the token, which needs a restart, so it is refused rather than taken as the new token.
pub fn to_toml_redacted(config: &Config) -> String {
    let mut shown = config.clone();
    if let Some(token) = &mut shown.admin.token {
        *token = REDACTED.to_string();
    }
    to_toml(&shown)
}

pub fn to_toml(config: &Config) -> String {
    let mut out = String::new();
    let server = &config.server;
    let workers = match server.workers {
        Workers::Auto => "\"auto\"".to_string(),
        Workers::Count(count) => count.to_string(),
    };
    let driver = server.io_driver.name();
    let _ = writeln!(
        out,
        "[server]\nworkers = {workers}\nio_driver = \"{driver}\"\npin_workers = {}\nshutdown_grace = \"{}\"\nexpose_worker_header = {}\nsplice_bodies = {}\nmax_connections = {}\n",
        server.pin_workers,
        format_duration(server.shutdown_grace),
        server.expose_worker_header,
        server.splice_bodies,
        server
            .max_connections
            .map_or_else(|| "\"auto\"".to_string(), |count| count.to_string())
    );
    for frontend in &config.frontends {
        let _ = writeln!(
            out,
            "[[frontends]]\nname = {}\naddress = \"{}\"\nport = {}\n{}{}",
            quote(&frontend.name),
            frontend.listen.ip(),
            frontend.listen.port(),
            duration_line("request_timeout", frontend.request_timeout),
            duration_line("per_try_timeout", frontend.per_try_timeout)
        );
        if let Some(tls) = &frontend.tls {
            frontend_tls(&mut out, tls);
        }
    }
    let _ = writeln!(
        out,
        "[balancer]\nalgorithm = \"{}\"\nhash_key = {}\nhash_method = \"{}\"\n",
        config.balancer.algorithm.name(),
        quote(&config.balancer.hash_key.name()),
        config.balancer.hash_method.name()
    );
    let dynamic = &config.balancer.dynamic_weights;
    let _ = writeln!(
        out,
        "[balancer.dynamic_weights]\nenabled = {}\ndecay = \"{}\"\nlatency_slack = \"{}\"\nmin_share = {:?}\n",
        dynamic.enabled,
        format_duration(dynamic.decay),
        format_duration(dynamic.latency_slack),
        dynamic.min_share
    );
    let sticky = &config.balancer.sticky;
    let _ = writeln!(
        out,
        "[balancer.sticky]\nenabled = {}\ncookie = {}\npath = {}\nsecure = {}\nhttp_only = {}\nsame_site = \"{}\"{}{}{}\n",
        sticky.enabled,
        quote(&sticky.cookie),
        quote(&sticky.path),
        sticky.secure,
        sticky.http_only,
        sticky.same_site.name(),
        sticky.ttl.map_or(String::new(), |ttl| format!("\nttl = \"{}\"", format_duration(ttl))),
        sticky.domain.as_ref().map_or(String::new(), |domain| format!("\ndomain = {}", quote(domain))),
        path(&sticky.secret_file).map_or(String::new(), |file| format!("\nsecret_file = {file}")),
    );
    for backend in &config.backends {
        let _ = writeln!(
            out,
            "[[backends]]\nid = {}\nurl = {}\nweight = {}\ndrain = {}{}{}{}{}\n",
            quote(&backend.id),
            quote(&backend.url),
            backend.weight,
            backend.drain,
            backend
                .server_name
                .as_ref()
                .map_or(String::new(), |name| format!("\nserver_name = {}", quote(name))),
            backend
                .max_connections
                .map_or(String::new(), |limit| format!("\nmax_connections = {limit}")),
            backend_healthcheck(&backend.healthcheck),
            backend_tags(&backend.tags)
        );
    }
    let timeouts = &config.timeouts;
    let _ = writeln!(
        out,
        "[timeouts]\nconnect = \"{}\"\nupstream_response = \"{}\"\nclient_header = \"{}\"\nclient_idle = \"{}\"\nclient_body = \"{}\"\nrequest = \"{}\"\n{}",
        format_duration(timeouts.connect),
        format_duration(timeouts.upstream_response),
        format_duration(timeouts.client_header),
        format_duration(timeouts.client_idle),
        format_duration(timeouts.client_body),
        format_duration(timeouts.request),
        duration_line("per_try", timeouts.per_try)
    );
    let retries = &config.retries;
    let _ = writeln!(
        out,
        "[retries]\non_status = {:?}\nbackoff = \"{}\"\nbackoff_max = \"{}\"\nbudget_ratio = {:?}\nbudget_min_per_second = {:?}\nbudget_window = \"{}\"\n",
        retries.on_status,
        format_duration(retries.backoff),
        format_duration(retries.backoff_max),
        retries.budget_ratio,
        retries.budget_min_per_second,
        format_duration(retries.budget_window)
    );
    let upstream = &config.upstream;
    let _ = writeln!(
        out,
        "[upstream]\nmax_idle_per_backend = {}\nidle_timeout = \"{}\"\nmax_connect_attempts = {}\nfail_timeout = \"{}\"\nmax_connections_per_backend = {}\nslow_start = \"{}\"\ncapacity_queue = {}\ncapacity_queue_timeout = \"{}\"\n",
        upstream.max_idle_per_backend,
        format_duration(upstream.idle_timeout),
        upstream.max_connect_attempts,
        format_duration(upstream.fail_timeout),
        upstream.max_connections_per_backend,
        format_duration(upstream.slow_start),
        upstream.capacity_queue,
        format_duration(upstream.capacity_queue_timeout)
    );
    let upstream_tls = &upstream.tls;
    let _ = writeln!(out, "[upstream.tls]");
    for (key, value) in [
        ("ca", path(&upstream_tls.ca)),
        ("cert", path(&upstream_tls.cert)),
        ("key", path(&upstream_tls.key)),
    ] {
        if let Some(value) = value {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
    let _ = writeln!(out, "insecure_skip_verify = {}\n", upstream_tls.insecure_skip_verify);
    let limits = &config.limits;
    let _ = writeln!(
        out,
        "[limits]\nmax_header_bytes = {}\nmax_request_line = {}\nmax_headers = {}\nmax_body_bytes = {}\nmin_body_rate = {}\n",
        limits.max_header_bytes,
        limits.max_request_line,
        limits.max_headers,
        limits.max_body_bytes,
        limits.min_body_rate
    );
    let health = &config.healthcheck;
    let _ = writeln!(
        out,
        "[healthcheck]\nenabled = {}\ninterval = \"{}\"\ntimeout = \"{}\"\npath = {}\nmethod = {}\n{}expected_status = \"{}-{}\"\nhealthy_threshold = {}\nunhealthy_threshold = {}\njitter = {:?}\npanic_mode = \"{}\"\n",
        health.enabled,
        format_duration(health.interval),
        format_duration(health.timeout),
        quote(&health.path),
        quote(&health.method),
        health
            .host
            .as_ref()
            .map_or(String::new(), |host| format!("host = {}\n", quote(host))),
        health.expected_status.0,
        health.expected_status.1,
        health.healthy_threshold,
        health.unhealthy_threshold,
        health.jitter,
        health.panic_mode.name()
    );
    let tls = &config.tls;
    let _ = writeln!(out, "[tls]");
    for (key, value) in [
        ("cert", path(&tls.cert)),
        ("key", path(&tls.key)),
        ("ca", path(&tls.ca)),
    ] {
        if let Some(value) = value {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
    let _ = writeln!(
        out,
        "client_auth = \"{}\"\nsession_tickets = {}\nticket_rotation = \"{}\"\nwatch = \"{}\"\n",
        tls.client_auth.name(),
        tls.session_tickets,
        format_duration(tls.ticket_rotation),
        format_duration(tls.watch)
    );
    let limit = &config.ratelimit;
    let allow: Vec<String> = limit.allow.iter().map(|block| quote(&block.to_string())).collect();
    let _ = writeln!(
        out,
        "[ratelimit]\nenabled = {}\nrate = {:?}\nburst = {}\nalgorithm = \"{}\"\nscope = \"{}\"\nmax_clients = {}\nallow = [{}]\n",
        limit.enabled,
        limit.rate,
        limit.burst,
        limit.algorithm.name(),
        limit.scope.name(),
        limit.max_clients,
        allow.join(", ")
    );
    for item in &limit.overrides {
        let _ = writeln!(
            out,
            "[[ratelimit.overrides]]\nfrontend = {}\nenabled = {}\nrate = {:?}\nburst = {}\n",
            quote(&item.frontend),
            item.enabled,
            item.rate,
            item.burst
        );
    }
    let breaker = &config.circuitbreaker;
    let _ = writeln!(
        out,
        "[circuitbreaker]\nenabled = {}\nthreshold = {}\ntimeout = \"{}\"\nmax_half_open = {}\nfailure_statuses = {:?}\n",
        breaker.enabled,
        breaker.threshold,
        format_duration(breaker.timeout),
        breaker.max_half_open,
        breaker.failure_statuses
    );
    let outlier = &config.outlier_detection;
    let _ = writeln!(
        out,
        "[outlier_detection]\nenabled = {}\nconsecutive_errors = {}\nfailure_ratio = {:?}\nmin_requests = {}\nwindow = \"{}\"\nbase_ejection_time = \"{}\"\nmax_ejection_time = \"{}\"\nmax_ejection_percent = {}\njitter = {:?}\nfailure_statuses = {:?}\n",
        outlier.enabled,
        outlier.consecutive_errors,
        outlier.failure_ratio,
        outlier.min_requests,
        format_duration(outlier.window),
        format_duration(outlier.base_ejection_time),
        format_duration(outlier.max_ejection_time),
        outlier.max_ejection_percent,
        outlier.jitter,
        outlier.failure_statuses
    );
    let _ = writeln!(
        out,
        "[logging]\nlevel = \"{}\"\nformat = \"{}\"\n",
        config.logging.level.name(),
        config.logging.format.name()
    );
    let _ = writeln!(
        out,
        "[metrics]\nenabled = {}\naddress = \"{}\"\nport = {}\n",
        config.metrics.enabled, config.metrics.address, config.metrics.port
    );
    let _ = writeln!(
        out,
        "[control]\nsocket = {}\nhistory = {}\n",
        quote(&config.control.socket.display().to_string()),
        config.control.history
    );
    let admin = &config.admin;
    let _ = writeln!(
        out,
        "[admin]\nenabled = {}\naddress = \"{}\"\nport = {}",
        admin.enabled,
        admin.listen.ip(),
        admin.listen.port()
    );
    if let Some(token) = &admin.token {
        let _ = writeln!(out, "token = {}", quote(token));
    }
    let access = &config.access_log;
    let _ = writeln!(
        out,
        "\n[access_log]\nenabled = {}\nformat = \"{}\"\npath = {}",
        access.enabled,
        access.format.name(),
        access
            .path
            .as_ref()
            .map_or_else(|| "\"stderr\"".to_string(), |path| quote(&path.display().to_string()))
    );
    let health = &config.health_endpoint;
    let _ = writeln!(
        out,
        "\n[health_endpoint]\nenabled = {}\npath = {}",
        health.enabled,
        quote(&health.path)
    );
    out
}

/// What changed from `old` to `new`, one short phrase per change, in config order.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    for backend in &new.backends {
        match old.backends.iter().find(|previous| previous.id == backend.id) {
            None => changes.push(format!(
                "backend {} added ({}, weight {})",
                backend.id, backend.url, backend.weight
            )),
            Some(previous) if previous.url != backend.url => changes.push(format!(
                "backend {} url {} -> {}",
                backend.id, previous.url, backend.url
            )),
            Some(previous) if previous.weight != backend.weight => changes.push(format!(
                "backend {} weight {} -> {}",
                backend.id, previous.weight, backend.weight
            )),
            Some(previous) if previous.drain != backend.drain => changes.push(format!(
                "backend {} {}",
                backend.id,
                if backend.drain { "draining" } else { "active" }
            )),
            Some(previous) if previous.healthcheck != backend.healthcheck => {
                changes.push(format!("backend {} health check settings changed", backend.id))
            }
            Some(previous) if previous.max_connections != backend.max_connections => {
                let limit = |limit: Option<u32>| limit.map_or("none".to_string(), |limit| limit.to_string());
                changes.push(format!(
                    "backend {} max_connections {} -> {}",
                    backend.id,
                    limit(previous.max_connections),
                    limit(backend.max_connections)
                ))
            }
            Some(previous) if previous.tags != backend.tags => {
                changes.push(format!("backend {} tags changed", backend.id))
            }
            Some(_) => {}
        }
    }
    for backend in &old.backends {
        if !new.backends.iter().any(|next| next.id == backend.id) {
            changes.push(format!("backend {} removed", backend.id));
        }
    }
    let sections: [(&str, bool); 17] = [
        ("server", old.server != new.server),
        ("frontends", old.frontends != new.frontends),
        ("balancer", old.balancer != new.balancer),
        ("timeouts", old.timeouts != new.timeouts),
        ("upstream", old.upstream != new.upstream),
        ("retries", old.retries != new.retries),
        ("limits", old.limits != new.limits),
        ("healthcheck", old.healthcheck != new.healthcheck),
        ("tls", old.tls != new.tls),
        ("ratelimit", old.ratelimit != new.ratelimit),
        ("circuitbreaker", old.circuitbreaker != new.circuitbreaker),
        ("outlier_detection", old.outlier_detection != new.outlier_detection),
        ("logging", old.logging != new.logging),
        ("metrics", old.metrics != new.metrics),
        ("control", old.control != new.control || old.admin != new.admin),
        ("access_log", old.access_log != new.access_log),
        ("health_endpoint", old.health_endpoint != new.health_endpoint),
    ];
    for (name, changed) in sections {
        if changed {
            changes.push(format!("[{name}] changed"));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_config_reads_back_identically() {
        let text = include_str!("../../config.toml");
        let config = parse_config(text).unwrap();
        let rendered = to_toml(&config);
        let again = parse_config(&rendered).unwrap_or_else(|errors| panic!("{errors}\n{rendered}"));
        assert_eq!(again, config);
    }

    #[test]
    fn health_checks_and_breaker_settings_read_back_identically() {
        let text = "[[frontends]]\nport = 1\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n\
                    healthcheck = { path = \"/ready\", interval = \"2s\", host = \"app.test\", enabled = true }\n\
                    [healthcheck]\nenabled = true\nmethod = \"HEAD\"\nexpected_status = \"200-204\"\njitter = 0.1\n\
                    panic_mode = \"fail_closed\"\n[circuitbreaker]\nenabled = true\nfailure_statuses = [503, 502]\n";
        let config = parse_config(text).unwrap();
        assert_eq!(config.circuitbreaker.failure_statuses, [502, 503]);
        let check = config.healthcheck.for_backend(&config.backends[0]).unwrap();
        assert_eq!((check.path.as_str(), check.host.as_str()), ("/ready", "app.test"));
        assert_eq!(
            (check.expected_status, check.interval),
            ((200, 204), Duration::from_secs(2))
        );
        let rendered = to_toml(&config);
        let again = parse_config(&rendered).unwrap_or_else(|errors| panic!("{errors}\n{rendered}"));
        assert_eq!(again, config);
    }

    #[test]
    fn diff_names_each_backend_change() {
        let base = "[[frontends]]\nport = 1\n[[backends]]\nid = \"a\"\nurl = \"http://127.0.0.1:1\"\n\
                    [[backends]]\nid = \"b\"\nurl = \"http://127.0.0.1:2\"\n";
        let next = "[[frontends]]\nport = 1\n[[backends]]\nid = \"a\"\nurl = \"http://127.0.0.1:1\"\nweight = 4\n\
                    [[backends]]\nid = \"c\"\nurl = \"http://127.0.0.1:3\"\n[timeouts]\nconnect = \"1s\"\n";
        let changes = diff(&parse_config(base).unwrap(), &parse_config(next).unwrap());
        assert_eq!(
            changes,
            [
                "backend a weight 1 -> 4",
                "backend c added (http://127.0.0.1:3, weight 1)",
                "backend b removed",
                "[timeouts] changed"
            ]
        );
        let capped = base.replace(
            "url = \"http://127.0.0.1:1\"\n",
            "url = \"http://127.0.0.1:1\"\nmax_connections = 8\n",
        );
        let tagged = base.replace(
            "url = \"http://127.0.0.1:2\"\n",
            "url = \"http://127.0.0.1:2\"\ntags = { zone = \"x\" }\n",
        );
        let (base, capped, tagged) = (
            parse_config(base).unwrap(),
            parse_config(&capped).unwrap(),
            parse_config(&tagged).unwrap(),
        );
        assert_eq!(diff(&base, &capped), ["backend a max_connections none -> 8"]);
        assert_eq!(diff(&base, &tagged), ["backend b tags changed"]);
    }
}
