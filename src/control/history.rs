//! The last N applied config versions, for `versions` and `rollback`. Pure: the caller supplies the time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::config::Config;

/// One applied version.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub version: u64,
    pub applied_at: SystemTime,
    pub source: String,
    pub summary: String,
    pub config: Arc<Config>,
}

impl VersionRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "version": self.version,
            "applied_at": rfc3339(self.applied_at),
            "source": self.source,
            "summary": self.summary,
        })
    }
}

/// Applied versions, oldest first, at most `capacity` of them.
#[derive(Debug)]
pub struct History {
    records: VecDeque<VersionRecord>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            records: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, record: VersionRecord) {
        while self.records.len() >= self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.records.len() > self.capacity {
            self.records.pop_front();
        }
    }

    pub fn find(&self, version: u64) -> Option<&VersionRecord> {
        self.records.iter().find(|record| record.version == version)
    }

    /// The version before the latest one.
    pub fn previous(&self) -> Option<&VersionRecord> {
        self.records.iter().rev().nth(1)
    }

    pub fn iter(&self) -> impl Iterator<Item = &VersionRecord> {
        self.records.iter()
    }
}

/// Formats a time as RFC 3339 in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    let (year, month, day, of_day, _) = crate::access_log::civil(time);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(version: u64) -> VersionRecord {
        let config =
            crate::config::parse_config("[[frontends]]\nport = 1\n[[backends]]\nurl = \"http://127.0.0.1:2\"\n")
                .unwrap();
        VersionRecord {
            version,
            applied_at: UNIX_EPOCH,
            source: "file".into(),
            summary: String::new(),
            config: Arc::new(config),
        }
    }

    #[test]
    fn keeps_the_last_n_versions() {
        let mut history = History::new(3);
        for version in 1..=5 {
            history.push(record(version));
        }
        let versions: Vec<u64> = history.iter().map(|record| record.version).collect();
        assert_eq!(versions, [3, 4, 5]);
        assert_eq!(history.previous().unwrap().version, 4);
        assert!(history.find(2).is_none());
        history.set_capacity(1);
        assert_eq!(history.iter().last().unwrap().version, 5);
        assert!(history.previous().is_none());
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
