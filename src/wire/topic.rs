//! The topic layout of the rack wire format:
//!
//! ```text
//! <prefix>/v1/host/<host>/readings   agent → controller, every tick, not retained
//! <prefix>/v1/host/<host>/facts      agent → controller, retained, on start and on change
//! <prefix>/v1/host/<host>/status     agent → controller, retained; the agent's last will
//! <prefix>/v1/host/<host>/caps       controller → agent, not retained (a lease must not replay)
//! <prefix>/v1/host/<host>/acks       agent → controller, not retained
//! ```
//!
//! The major version is a topic level, so agents and controllers of different majors never
//! read each other's messages; one host per level makes per-host ACLs simple
//! (`pattern write coolantd/v1/host/%u/readings`).

use std::fmt;

/// Which message a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Readings,
    Facts,
    Status,
    Caps,
    Acks,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Readings,
        Kind::Facts,
        Kind::Status,
        Kind::Caps,
        Kind::Acks,
    ];

    /// The last topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Readings => "readings",
            Kind::Facts => "facts",
            Kind::Status => "status",
            Kind::Caps => "caps",
            Kind::Acks => "acks",
        }
    }

    /// Whether the message is published retained.
    pub fn retained(self) -> bool {
        matches!(self, Kind::Facts | Kind::Status)
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed wire topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub host: String,
    pub kind: Kind,
}

/// The version level in topics: the major version only.
const LEVEL: &str = "v1";

impl Topic {
    /// The topic for one host and kind under `prefix` (for example `coolantd`).
    pub fn format(prefix: &str, host: &str, kind: Kind) -> String {
        format!("{prefix}/{LEVEL}/host/{host}/{kind}")
    }

    /// The subscription filter a controller uses for one of its hosts.
    pub fn host_filter(prefix: &str, host: &str) -> String {
        format!("{prefix}/{LEVEL}/host/{host}/+")
    }

    /// Parses a topic under `prefix`; `None` for anything that is not a v1 wire topic.
    pub fn parse(prefix: &str, topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
        let rest = rest.strip_prefix(LEVEL)?.strip_prefix("/host/")?;
        let (host, kind) = rest.rsplit_once('/')?;
        if host.is_empty() || host.contains('/') {
            return None;
        }
        Some(Topic {
            host: host.to_string(),
            kind: Kind::parse(kind)?,
        })
    }
}
