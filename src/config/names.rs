//! One name table per config choice. The file parser reads a choice through its table ([`Section::choice`]) and the
//! renderer, `ctl log-level` and `status` write it back through the same table, so each spelling exists once. The
//! table is a `match`, so a variant without a name does not compile.
//!
//! [`Section::choice`]: super::reader::Section::choice

use super::{
    AccessLogFormat, Algorithm, ClientAuth, HashMethod, IoDriverChoice, LogFormat, LogLevel, PanicMode,
    RateLimitAlgorithm, RateLimitScope, SameSite, TlsVersion,
};

/// A config value chosen by name from a fixed set.
pub trait Choice: Copy + PartialEq + Sized + 'static {
    /// Every value, in the order error messages list them.
    const ALL: &'static [Self];

    /// The value's name in the config file.
    fn name(self) -> &'static str;

    /// The value named `name`, if any.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|value| value.name() == name)
    }

    /// The names, quoted and comma-separated, for error messages.
    fn listed() -> String {
        let names: Vec<String> = Self::ALL.iter().map(|value| format!("{:?}", value.name())).collect();
        names.join(", ")
    }
}

macro_rules! choice {
    ($type:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl Choice for $type {
            const ALL: &'static [Self] = &[$($type::$variant),+];

            fn name(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }
        }
    };
}

choice!(IoDriverChoice { Auto => "auto", IoUring => "io_uring", Epoll => "epoll" });
choice!(Algorithm {
    RoundRobin => "round_robin",
    WeightedRoundRobin => "weighted_round_robin",
    LeastConnections => "least_connections",
    PowerOfTwo => "power_of_two",
    Random => "random",
    LeastResponseTime => "least_response_time",
    IpHash => "ip_hash",
    ConsistentHash => "consistent_hash",
});
choice!(HashMethod { Maglev => "maglev", Rendezvous => "rendezvous" });
choice!(ClientAuth { None => "none", Optional => "optional", Required => "required" });
choice!(RateLimitAlgorithm { TokenBucket => "token_bucket", SlidingWindow => "sliding_window" });
choice!(RateLimitScope { Global => "global", ClientIp => "client_ip" });
choice!(LogLevel { Error => "error", Warn => "warn", Info => "info", Debug => "debug", Trace => "trace" });
choice!(LogFormat { Text => "text", Json => "json" });
choice!(AccessLogFormat { Json => "json", Combined => "combined" });
choice!(PanicMode { FailOpen => "fail_open", FailClosed => "fail_closed" });
choice!(SameSite { Lax => "lax", Strict => "strict", None => "none" });
choice!(TlsVersion { Tls12 => "1.2", Tls13 => "1.3" });

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Choice + std::fmt::Debug>() {
        for value in T::ALL {
            assert_eq!(T::from_name(value.name()), Some(*value), "{value:?}");
        }
        assert_eq!(T::from_name("no such name"), None);
    }

    #[test]
    fn every_name_reads_back_as_its_value() {
        round_trips::<IoDriverChoice>();
        round_trips::<Algorithm>();
        round_trips::<ClientAuth>();
        round_trips::<RateLimitAlgorithm>();
        round_trips::<RateLimitScope>();
        round_trips::<LogLevel>();
        round_trips::<LogFormat>();
        round_trips::<AccessLogFormat>();
        round_trips::<PanicMode>();
        round_trips::<TlsVersion>();
    }

    #[test]
    fn names_are_listed_in_order_for_errors() {
        assert_eq!(LogFormat::listed(), "\"text\", \"json\"");
        assert_eq!(
            Algorithm::from_name("weighted_round_robin"),
            Some(Algorithm::WeightedRoundRobin)
        );
    }
}
