//! The frontends' TLS on the control thread. Every certificate and CA bundle a config names is read and checked
//! here (on a job's thread for a change, on the control thread at start), so a worker never reads a file and a
//! broken pair is refused, with the file and the reason, while the running certificates stay. A termination whose
//! files and settings are unchanged keeps its `Arc`, so the cores keep their `ServerConfig` and session caches.
//!
//! Session-ticket keys are made here too and rotated every `[tls] ticket_rotation`; each rotation goes to every
//! core ([`ToWorker::TicketKeys`](crate::worker::ToWorker::TicketKeys)) without a config version.
//!
//! With `[tls] watch`, the files are looked at (size, modification time, inode) that often, and a change reloads
//! them as `cert reload` does: a certificate manager that renames a new pair into place is picked up without a
//! signal. A pair caught half-written is refused and tried again at the next change.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::Config;
use crate::tls::termination::{Termination, TerminationError};
use crate::tls::tickets::{TicketKeyError, TicketKeys};
use crate::tls::upstream::{UpstreamTls, UpstreamTlsError};

/// Reads and checks the TLS of each of `config`'s frontends, in order (`None`: plain HTTP). Each is also built
/// into a `ServerConfig` once, so that what a core will build from it is known to build.
pub fn load_terminations(config: &Config) -> Result<Vec<Option<Termination>>, TerminationError> {
    let provider = crate::tls::provider();
    let now = SystemTime::now();
    config
        .frontends
        .iter()
        .map(|frontend| {
            let Some(tls) = &frontend.tls else {
                return Ok(None);
            };
            let termination = Termination::load(&frontend.name, tls, &provider, now)?;
            termination
                .server_config(None)
                .map_err(|error| TerminationError::Build {
                    frontend: frontend.name.clone(),
                    reason: error.to_string(),
                })?;
            Ok(Some(termination))
        })
        .collect()
}

/// The terminations to hand the cores: `loaded`, where one is the same as the running one, replaced by the
/// running `Arc`. Also returns the names of the frontends whose TLS changed.
pub fn keep_unchanged(
    config: &Config,
    running: &[Option<Arc<Termination>>],
    loaded: Vec<Option<Termination>>,
) -> (Vec<Option<Arc<Termination>>>, Vec<String>) {
    let mut changed = Vec::new();
    let kept = loaded
        .into_iter()
        .enumerate()
        .map(|(index, loaded)| {
            let previous = running.get(index).and_then(Option::as_ref);
            match (previous, loaded) {
                (Some(previous), Some(loaded)) if previous.same_as(&loaded) => Some(Arc::clone(previous)),
                (previous, loaded) => {
                    if previous.is_some() || loaded.is_some() {
                        if let Some(frontend) = config.frontends.get(index) {
                            changed.push(frontend.name.clone());
                        }
                    }
                    loaded.map(Arc::new)
                }
            }
        })
        .collect();
    (kept, changed)
}

/// Refuses `loaded` when a certificate file a running frontend already serves was read again and the new
/// certificate no longer serves a name the old one did ([`Termination::check_renews`]). Frontends are matched by
/// name.
pub fn check_renewals(
    running_config: &Config,
    running: &[Option<Arc<Termination>>],
    config: &Config,
    loaded: &[Option<Termination>],
) -> Result<(), TerminationError> {
    for (frontend, loaded) in config.frontends.iter().zip(loaded) {
        let previous = running_config
            .frontends
            .iter()
            .position(|old| old.name == frontend.name)
            .and_then(|index| running.get(index))
            .and_then(Option::as_ref);
        if let (Some(loaded), Some(previous)) = (loaded, previous) {
            loaded.check_renews(&frontend.name, previous)?;
        }
    }
    Ok(())
}

/// The `[upstream.tls]` to hand the cores: the running `Arc` when `loaded` is the same material, so every core
/// keeps its client config and the sessions it holds with backends. Also says whether the material changed under
/// a running one (a CA bundle or client certificate rewritten in place).
pub fn keep_unchanged_upstream(
    running: Option<&Arc<UpstreamTls>>,
    loaded: Option<UpstreamTls>,
) -> (Option<Arc<UpstreamTls>>, bool) {
    match (running, loaded) {
        (Some(running), Some(loaded)) if running.same_as(&loaded) => (Some(Arc::clone(running)), false),
        (running, loaded) => {
            let rewritten = running.is_some() && loaded.is_some();
            (loaded.map(Arc::new), rewritten)
        }
    }
}

/// The session-ticket keys and when they were last rotated.
pub struct TicketRotation {
    pub keys: Option<Arc<TicketKeys>>,
    rotated_at: Instant,
}

impl TicketRotation {
    /// The first keys, when `config` has session tickets on.
    pub fn start(config: &Config) -> Result<TicketRotation, TicketKeyError> {
        let keys = match config.tls.session_tickets {
            true => Some(Arc::new(TicketKeys::new(config.tls.ticket_rotation)?)),
            false => None,
        };
        Ok(TicketRotation {
            keys,
            rotated_at: Instant::now(),
        })
    }

    /// New keys when the current ones are due (or the settings changed); `None` when nothing is to be sent.
    pub fn due(&mut self, config: &Config, now: Instant) -> Option<Arc<TicketKeys>> {
        let wanted = config.tls.session_tickets.then_some(config.tls.ticket_rotation);
        let next = match (&self.keys, wanted) {
            (None, None) => return None,
            (Some(_), None) => {
                // Tickets switched off (a config change, whose snapshot then carries no keys).
                self.keys = None;
                return None;
            }
            (None, Some(rotation)) => TicketKeys::new(rotation),
            (Some(keys), Some(rotation)) if keys.rotation != rotation => keys.rotated(rotation),
            (Some(keys), Some(rotation)) if now.duration_since(self.rotated_at) >= rotation => keys.rotated(rotation),
            (Some(_), Some(_)) => return None,
        };
        match next {
            Ok(next) => {
                let next = Arc::new(next);
                self.keys = Some(Arc::clone(&next));
                self.rotated_at = now;
                Some(next)
            }
            Err(error) => {
                tracing::error!(%error, "session-ticket keys not rotated; the current ones stay");
                self.rotated_at = now;
                None
            }
        }
    }
}

/// One watched file as last seen: its size, modification time and inode (`None`: it could not be read).
type FileStamp = (PathBuf, Option<(u64, SystemTime, u64)>);

/// `[tls] watch`: the TLS files as last seen, and when.
pub struct CertificateWatch {
    looked_at: Instant,
    seen: Vec<FileStamp>,
}

impl CertificateWatch {
    pub fn start(config: &Config) -> CertificateWatch {
        CertificateWatch {
            looked_at: Instant::now(),
            seen: stamps(config),
        }
    }

    /// Whether a file `config`'s TLS reads changed since the last look; looks once every `[tls] watch` at most.
    pub fn changed(&mut self, config: &Config, now: Instant) -> bool {
        let every = config.tls.watch;
        if every.is_zero() || now.duration_since(self.looked_at) < every {
            return false;
        }
        self.looked_at = now;
        let stamps = stamps(config);
        if stamps == self.seen {
            return false;
        }
        self.seen = stamps;
        true
    }
}

/// Every certificate, key and client CA file of `config`'s TLS frontends, and the `[upstream.tls]` files when a
/// backend is `https://`, as they are now.
fn stamps(config: &Config) -> Vec<FileStamp> {
    let mut paths = Vec::new();
    for tls in config.frontends.iter().filter_map(|frontend| frontend.tls.as_ref()) {
        for files in &tls.certificates {
            paths.push(files.cert.clone());
            paths.push(files.key.clone());
        }
        paths.extend(tls.client_ca.clone());
    }
    if config.has_https_backends() {
        let upstream = &config.upstream.tls;
        paths.extend(
            [&upstream.ca, &upstream.cert, &upstream.key]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    paths
        .into_iter()
        .map(|path| {
            let stamp = std::fs::metadata(&path).ok().map(|meta| {
                (
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.ino(),
                )
            });
            (path, stamp)
        })
        .collect()
}

/// `[upstream.tls]` read and checked, when any backend is `https://` (`None` otherwise).
pub fn load_upstream(config: &Config) -> Result<Option<UpstreamTls>, UpstreamTlsError> {
    if !config.has_https_backends() {
        return Ok(None);
    }
    let upstream = UpstreamTls::load(&config.upstream.tls)?;
    if let Err(error) = upstream.client_config(crate::tls::provider()) {
        return Err(UpstreamTlsError::Build {
            reason: error.to_string(),
        });
    }
    Ok(Some(upstream))
}
