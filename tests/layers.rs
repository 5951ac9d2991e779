//! The import direction ARCHITECTURE.md describes ("Floors"), held as a test: the per-core state and the request
//! path never reach up to the worker or the control thread, and the pure modules reach none of the I/O layers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on any surprise

use std::path::{Path, PathBuf};

fn sources(folder: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(folder)];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
    assert!(!found.is_empty(), "no sources under src/{folder}");
    found
}

/// Every `crate::<module>` reference in `folders` to one of `forbidden`.
fn reaches(folders: &[&str], forbidden: &[&str]) -> Vec<String> {
    let mut offences = Vec::new();
    for folder in folders {
        for path in sources(folder) {
            let text = std::fs::read_to_string(&path).unwrap();
            for (number, line) in text.lines().enumerate() {
                for module in forbidden {
                    let reference = format!("crate::{module}");
                    let hit = line.match_indices(&reference).any(|(at, _)| {
                        let after = line[at + reference.len()..].chars().next();
                        !after.is_some_and(|next| next.is_alphanumeric() || next == '_')
                    });
                    if hit {
                        offences.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                    }
                }
            }
        }
    }
    offences
}

#[test]
fn the_per_core_state_and_the_request_path_never_reach_up() {
    let offences = reaches(&["shard", "proxy", "net", "health"], &["worker", "control"]);
    assert!(
        offences.is_empty(),
        "imports that run back up:\n{}",
        offences.join("\n")
    );
}

#[test]
fn tls_material_reaches_no_core_or_control_layer() {
    let offences = reaches(&["tls"], &["net", "shard", "proxy", "worker", "control"]);
    assert!(
        offences.is_empty(),
        "tls importing upper layers:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_pure_modules_reach_no_io_layer() {
    let offences = reaches(
        &["config", "http", "balance", "upstream", "ratelimit", "metrics"],
        &["net", "shard", "proxy", "worker", "control"],
    );
    assert!(
        offences.is_empty(),
        "pure modules importing I/O layers:\n{}",
        offences.join("\n")
    );
}

/// Every line in the `.rs` files under `folder` (relative to the crate) that mentions `needle`.
fn mentions(folder: &str, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(folder)];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        } else if path.extension().is_some_and(|extension| extension == "rs") && !path.ends_with("layers.rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (number, line) in text.lines().enumerate() {
                if line.contains(needle) {
                    found.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn test_peers_do_not_share_corelbs_http_parser() {
    // The example backend and the test client frame HTTP themselves, so a framing bug cannot hide on both sides.
    let mut offences = mentions("src/bin/corelb-backend", "corelb::http");
    offences.extend(mentions("tests", "corelb::http"));
    assert!(
        offences.is_empty(),
        "test peers using corelb's parser:\n{}",
        offences.join("\n")
    );
}

#[test]
fn system_calls_are_made_only_in_net() {
    // Every `unsafe` block (a system call, or a buffer handed to the kernel) lives in `src/net`, behind a safe
    // function that says what it does.
    let offences: Vec<String> = mentions("src", "unsafe {")
        .into_iter()
        .filter(|line| !line.contains("/src/net/"))
        .collect();
    assert!(
        offences.is_empty(),
        "unsafe code outside src/net:\n{}",
        offences.join("\n")
    );
}
