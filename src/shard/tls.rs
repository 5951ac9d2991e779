//! This core's TLS: one `rustls::ServerConfig` per frontend that terminates TLS, built here from the
//! [`Termination`] the control thread loaded, so that its signing keys, session cache and ticketer are this core's
//! alone. A config is rebuilt only when its termination or the ticket keys are new `Arc`s: an unchanged
//! certificate keeps the session cache, and with it the clients that resume by session id.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

use crate::tls::termination::Termination;
use crate::tls::tickets::TicketKeys;
use crate::tls::upstream::UpstreamTls;

/// What a connection accepted on a TLS frontend is handshaken with.
#[derive(Clone)]
pub struct Terminate {
    pub server: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    /// The request header the client certificate's subject goes to the backend in (and is always removed from
    /// what the client sent).
    pub identity_header: Option<Arc<str>>,
}

struct CoreTermination {
    source: Arc<Termination>,
    /// `None`: this core could not build a config from it; the frontend then closes every connection rather
    /// than serve plain HTTP on a TLS port.
    terminate: Option<Terminate>,
}

/// How a connection accepted on a frontend goes on.
pub enum Accept {
    Plain,
    Tls(Terminate),
    /// The frontend terminates TLS but this core has no config for it: close the connection.
    Refuse,
}

/// One core's TLS server configs, by frontend.
#[derive(Default)]
pub struct CoreTls {
    keys: Option<Arc<TicketKeys>>,
    frontends: Vec<Option<CoreTermination>>,
    /// This core's `ClientConfig` for `https://` backends (its own session store), and what it was built from.
    upstream: Option<(Arc<UpstreamTls>, Option<Arc<rustls::ClientConfig>>)>,
}

impl CoreTls {
    /// Follows `terminations` (one per frontend, in order) and `keys`, rebuilding what changed.
    pub fn follow(
        &mut self,
        terminations: &[Option<Arc<Termination>>],
        identity_headers: &[Option<String>],
        keys: Option<&Arc<TicketKeys>>,
    ) {
        let keys_changed = match (&self.keys, keys) {
            (Some(old), Some(new)) => !Arc::ptr_eq(old, new),
            (None, None) => false,
            _ => true,
        };
        self.keys = keys.cloned();
        let mut next = Vec::with_capacity(terminations.len());
        for (index, termination) in terminations.iter().enumerate() {
            let header = identity_headers.get(index).cloned().flatten();
            let previous = self.frontends.get_mut(index).and_then(Option::take);
            let Some(termination) = termination else {
                next.push(None);
                continue;
            };
            let kept = previous.filter(|previous| !keys_changed && Arc::ptr_eq(&previous.source, termination));
            let built = kept.unwrap_or_else(|| self.build(termination));
            let mut built = built;
            if let Some(terminate) = built.terminate.as_mut() {
                terminate.identity_header = header.map(Arc::from);
            }
            next.push(Some(built));
        }
        self.frontends = next;
    }

    fn build(&self, termination: &Arc<Termination>) -> CoreTermination {
        let terminate = match termination.server_config(self.keys.as_deref()) {
            Ok(server) => Some(Terminate {
                server: Arc::new(server),
                handshake_timeout: termination.handshake_timeout,
                identity_header: None,
            }),
            Err(error) => {
                // The control thread built one from the same termination before handing it over, so this does
                // not happen; should it, the frontend closes connections rather than serve them in the clear.
                tracing::error!(%error, "cannot build this core's TLS config; the frontend closes connections");
                None
            }
        };
        CoreTermination {
            source: Arc::clone(termination),
            terminate,
        }
    }

    /// New ticket keys (a rotation): every config is rebuilt with them.
    pub fn rotate(&mut self, keys: Arc<TicketKeys>) {
        let terminations: Vec<Option<Arc<Termination>>> = self
            .frontends
            .iter()
            .map(|core| core.as_ref().map(|core| Arc::clone(&core.source)))
            .collect();
        let headers: Vec<Option<String>> = self
            .frontends
            .iter()
            .map(|core| {
                let terminate = core.as_ref().and_then(|core| core.terminate.as_ref());
                terminate.and_then(|terminate| terminate.identity_header.as_deref().map(str::to_owned))
            })
            .collect();
        self.follow(&terminations, &headers, Some(&keys));
    }

    /// Follows `[upstream.tls]`: a new `Arc` builds this core's client config again.
    pub fn follow_upstream(&mut self, upstream: Option<&Arc<UpstreamTls>>) {
        let Some(upstream) = upstream else {
            self.upstream = None;
            return;
        };
        if let Some((source, _)) = &self.upstream {
            if Arc::ptr_eq(source, upstream) {
                return;
            }
        }
        let provider = Arc::new(crate::tls::provider_for_core());
        let config = match upstream.client_config(provider) {
            Ok(config) => Some(Arc::new(config)),
            Err(error) => {
                // Built once on the control thread first; should this core fail, its TLS connects fail (502).
                tracing::error!(%error, "cannot build this core's TLS config for https:// backends");
                None
            }
        };
        self.upstream = Some((Arc::clone(upstream), config));
    }

    /// This core's client config for `https://` backends, if there is one.
    pub fn upstream(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.upstream.as_ref().and_then(|(_, config)| config.clone())
    }

    /// How a connection accepted on `frontend` goes on.
    pub fn accept(&self, frontend: usize) -> Accept {
        match self.frontends.get(frontend).and_then(Option::as_ref) {
            None => Accept::Plain,
            Some(core) => core.terminate.clone().map_or(Accept::Refuse, Accept::Tls),
        }
    }
}
