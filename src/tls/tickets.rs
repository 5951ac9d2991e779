//! Session tickets that every core can open. The control thread makes the keys and rotates them
//! ([`TicketKeys::rotated`]); each core builds its own [`CoreTicketer`] from them, so a client that resumes on
//! whichever core accepts its next connection resumes, and no ticket operation takes a lock or touches an atomic
//! another core uses (rustls' own ticketer sits behind a mutex for its rotation).
//!
//! A ticket is `key id (4) ‖ nonce (12) ‖ AES-256-GCM(state) ‖ tag (16)`, the key id also authenticated. Tickets
//! are made with the current key and opened with the current or the previous one, so a ticket lives between one
//! and two rotation periods; a key older than that is gone from every core, and with it the ability to open the
//! tickets it made (what forward secrecy of resumption asks: RFC 8446 §C.4, RFC 5077 §5.5).

use std::time::Duration;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const KEY_ID_LEN: usize = 4;
const TAG_LEN: usize = 16;

/// One ticket key: its id (carried in every ticket it made) and its expanded AES key. Each core clones it into
/// its own ticketer (a copy of the key schedule, nothing shared).
#[derive(Clone)]
struct TicketKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

impl TicketKey {
    fn random(rng: &SystemRandom) -> Result<TicketKey, TicketKeyError> {
        let mut id = [0u8; KEY_ID_LEN];
        let mut secret = [0u8; 32];
        rng.fill(&mut id).map_err(|_| TicketKeyError)?;
        rng.fill(&mut secret).map_err(|_| TicketKeyError)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &secret).map_err(|_| TicketKeyError)?;
        Ok(TicketKey {
            id,
            key: LessSafeKey::new(unbound),
        })
    }
}

/// The system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the system's random number generator failed; no session-ticket key could be made")]
pub struct TicketKeyError;

/// The ticket keys in force: made on the control thread, handed to every core in its snapshot.
#[derive(Clone)]
pub struct TicketKeys {
    current: TicketKey,
    previous: Option<TicketKey>,
    /// How long a key makes tickets before the next replaces it.
    pub rotation: Duration,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TicketKeys")
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// A first key, made now.
    pub fn new(rotation: Duration) -> Result<TicketKeys, TicketKeyError> {
        Ok(TicketKeys {
            current: TicketKey::random(&SystemRandom::new())?,
            previous: None,
            rotation,
        })
    }

    /// The next keys, to be rotated every `rotation`: a new current one, the current one kept to open the
    /// tickets it made.
    pub fn rotated(&self, rotation: Duration) -> Result<TicketKeys, TicketKeyError> {
        Ok(TicketKeys {
            current: TicketKey::random(&SystemRandom::new())?,
            previous: Some(self.current.clone()),
            rotation,
        })
    }
}

/// One core's ticket maker and opener.
pub struct CoreTicketer {
    current: ([u8; KEY_ID_LEN], LessSafeKey),
    previous: Option<([u8; KEY_ID_LEN], LessSafeKey)>,
    lifetime: u32,
    rng: SystemRandom,
}

impl std::fmt::Debug for CoreTicketer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CoreTicketer")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn sealing_key(key: &TicketKey) -> ([u8; KEY_ID_LEN], LessSafeKey) {
    (key.id, key.key.clone())
}

impl CoreTicketer {
    pub fn new(keys: &TicketKeys) -> CoreTicketer {
        CoreTicketer {
            current: sealing_key(&keys.current),
            previous: keys.previous.as_ref().map(sealing_key),
            // Tickets stay good for at least one rotation period: what clients are told.
            lifetime: keys.rotation.as_secs().min(u64::from(u32::MAX)) as u32,
            rng: SystemRandom::new(),
        }
    }
}

impl rustls::server::ProducesTickets for CoreTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (id, key) = &self.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(id);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(id), &mut sealed)
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|(key_id, _)| key_id == id)
            .map(|(_, key)| key)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(id), &mut opened).ok()?;
        let length = plain.len();
        opened.truncate(length);
        Some(opened)
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    #[test]
    fn a_ticket_opens_on_another_core_and_after_one_rotation_but_not_two() {
        let keys = TicketKeys::new(Duration::from_secs(6 * 3600)).unwrap();
        let ticket = CoreTicketer::new(&keys).encrypt(b"session state").unwrap();
        assert_eq!(
            CoreTicketer::new(&keys).decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        let once = keys.rotated(keys.rotation).unwrap();
        assert_eq!(
            CoreTicketer::new(&once).decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        let twice = once.rotated(once.rotation).unwrap();
        assert_eq!(CoreTicketer::new(&twice).decrypt(&ticket), None);
        assert_eq!(CoreTicketer::new(&keys).lifetime(), 6 * 3600);
    }

    #[test]
    fn a_tampered_or_short_ticket_opens_to_nothing() {
        let keys = TicketKeys::new(Duration::from_secs(60)).unwrap();
        let ticketer = CoreTicketer::new(&keys);
        let ticket = ticketer.encrypt(b"state").unwrap();
        for index in 0..ticket.len() {
            let mut tampered = ticket.clone();
            tampered[index] ^= 1;
            assert_eq!(ticketer.decrypt(&tampered), None, "byte {index}");
        }
        assert_eq!(ticketer.decrypt(&ticket[..10]), None);
        assert_eq!(ticketer.decrypt(&[]), None);
        let other = CoreTicketer::new(&TicketKeys::new(Duration::from_secs(60)).unwrap());
        assert_eq!(other.decrypt(&ticket), None, "another process's keys");
    }
}
