//! `[influx]`: the sink's configuration, its validation (every problem named by its key),
//! the secrets it reads (token, v1 password) and what it implies for the write path.

use super::SinkError;
use crate::sink::spool::FsyncPolicy;
use crate::validate::Issues;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A secret string: shown as `<redacted>` in `Debug`, so a configuration dump or log line can
/// never carry the token.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// When the spool is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// After every `submit`: survives a power loss, costs one fdatasync per tick.
    Always,
    /// At most every `fsync_interval_ms`.
    #[default]
    Interval,
    /// Left to the OS: survives a daemon crash, not a power loss.
    Never,
}

/// Which InfluxDB write API the sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InfluxApi {
    /// `/api/v2/write?org=&bucket=` with a token: InfluxDB 2.x, InfluxDB 3, VictoriaMetrics.
    #[default]
    V2,
    /// `/write?db=&rp=` with user/password or a token: InfluxDB 1.x, and InfluxDB 2.x and 3
    /// through their v1 compatibility endpoint.
    V1,
}

/// `[influx]`: where metrics go and how hard the sink tries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the InfluxDB (or compatible) server, for example `http://influx:8086`.
    pub url: String,
    /// The write API: `v2` (default) or `v1`.
    #[serde(default)]
    pub api: InfluxApi,
    #[serde(default)]
    pub org: String,
    /// The v2 bucket (required with `api = "v2"`).
    #[serde(default)]
    pub bucket: String,
    /// The v1 database (required with `api = "v1"`).
    #[serde(default)]
    pub database: String,
    /// The v1 retention policy; empty means the database's default one.
    #[serde(default)]
    pub retention_policy: String,
    /// The v1 user name (with one of `password`, `password_file`, `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// The v1 password inline. Prefer `password_file` or `password_env`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the v1 password (surrounding whitespace is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the v1 password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The API token inline. Prefer `token_file` or `token_env`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the token (surrounding whitespace is ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Most points per write request.
    #[serde(default = "d_batch_size")]
    pub batch_size: usize,
    /// A partial batch is sent at the latest this long after the previous write.
    #[serde(default = "d_flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "d_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Gzip request bodies (`Content-Encoding: gzip`). Selects the direct HTTP write path,
    /// because influxdb2 0.5's line-protocol writer cannot compress.
    #[serde(default)]
    pub gzip: bool,
    /// On 429 and 503, wait for the server's `Retry-After` instead of the back-off. Selects
    /// the direct HTTP write path, because influxdb2 0.5 does not expose response headers.
    #[serde(default)]
    pub honor_retry_after: bool,
    #[serde(default = "d_retry_min_ms")]
    pub retry_min_ms: u64,
    #[serde(default = "d_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Bound on the disk spool. When reached, the oldest points are dropped (and counted).
    #[serde(default = "d_spool_max_bytes")]
    pub spool_max_bytes: u64,
    #[serde(default)]
    pub fsync: FsyncMode,
    #[serde(default = "d_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Where rejected batches go, relative to the state folder unless absolute.
    #[serde(default = "d_dead_letter")]
    pub dead_letter: PathBuf,
}

// InfluxData recommends batches of 5,000 lines ("Optimize writes" in the v2 documentation).
fn d_batch_size() -> usize {
    5000
}
fn d_flush_interval_ms() -> u64 {
    1000
}
fn d_request_timeout_ms() -> u64 {
    10_000
}
fn d_retry_min_ms() -> u64 {
    500
}
fn d_retry_max_ms() -> u64 {
    60_000
}
// 1 GiB holds about 4 million coolantd lines: days of one host's telemetry at 1 Hz.
fn d_spool_max_bytes() -> u64 {
    1 << 30
}
fn d_fsync_interval_ms() -> u64 {
    1000
}
fn d_dead_letter() -> PathBuf {
    PathBuf::from("influx-dead-letter.lp")
}

impl InfluxConfig {
    /// A configuration with defaults for everything but the address.
    pub fn new(url: impl Into<String>, bucket: impl Into<String>) -> Self {
        InfluxConfig {
            url: url.into(),
            api: InfluxApi::V2,
            org: String::new(),
            bucket: bucket.into(),
            database: String::new(),
            retention_policy: String::new(),
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            token: None,
            token_file: None,
            token_env: None,
            batch_size: d_batch_size(),
            flush_interval_ms: d_flush_interval_ms(),
            request_timeout_ms: d_request_timeout_ms(),
            gzip: false,
            honor_retry_after: false,
            retry_min_ms: d_retry_min_ms(),
            retry_max_ms: d_retry_max_ms(),
            spool_max_bytes: d_spool_max_bytes(),
            fsync: FsyncMode::default(),
            fsync_interval_ms: d_fsync_interval_ms(),
            dead_letter: d_dead_letter(),
        }
    }

    pub fn validate(&self, key: &str, issues: &mut Issues) {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(u) => issues.push(
                format!("{key}.url"),
                format!(
                    "an http:// or https:// URL with a host, got scheme `{}`",
                    u.scheme()
                ),
            ),
            Err(e) => issues.push(
                format!("{key}.url"),
                format!("a URL like http://influx:8086, got `{}` ({e})", self.url),
            ),
        }
        let sources = [
            self.token.is_some(),
            self.token_file.is_some(),
            self.token_env.is_some(),
        ];
        let tokens = sources.iter().filter(|s| **s).count();
        let passwords = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        match self.api {
            InfluxApi::V2 => {
                issues.check(
                    !self.bucket.trim().is_empty(),
                    format!("{key}.bucket"),
                    "a bucket name (api = \"v2\")",
                );
                // v1-only keys under v2 are a mistake the operator should hear about, not
                // settings silently ignored.
                for (set, name) in [
                    (!self.database.is_empty(), "database"),
                    (!self.retention_policy.is_empty(), "retention_policy"),
                    (self.username.is_some(), "username"),
                    (passwords > 0, "password"),
                ] {
                    issues.check(
                        !set,
                        format!("{key}.{name}"),
                        "no v1 key with api = \"v2\" (set api = \"v1\" for InfluxDB 1.x)",
                    );
                }
            }
            InfluxApi::V1 => {
                issues.check(
                    !self.database.trim().is_empty(),
                    format!("{key}.database"),
                    "a database name (api = \"v1\")",
                );
                issues.check(
                    self.bucket.is_empty() && self.org.is_empty(),
                    format!("{key}.bucket"),
                    "no bucket or org with api = \"v1\" (use database and retention_policy)",
                );
                issues.check(
                    passwords <= 1,
                    format!("{key}.password"),
                    "at most one of password, password_file, password_env",
                );
                issues.check(
                    self.username.is_some() == (passwords > 0),
                    format!("{key}.username"),
                    "username and a password together (or neither)",
                );
                issues.check(
                    !(self.username.is_some() && tokens > 0),
                    format!("{key}.token"),
                    "either username/password or a token, not both",
                );
            }
        }
        issues.check(
            tokens <= 1,
            format!("{key}.token"),
            "at most one of token, token_file, token_env",
        );
        issues.check(
            (1..=100_000).contains(&self.batch_size),
            format!("{key}.batch_size"),
            format!("between 1 and 100000 points, got {}", self.batch_size),
        );
        issues.check(
            (10..=3_600_000).contains(&self.flush_interval_ms),
            format!("{key}.flush_interval_ms"),
            format!("between 10 and 3600000 ms, got {}", self.flush_interval_ms),
        );
        issues.check(
            (100..=600_000).contains(&self.request_timeout_ms),
            format!("{key}.request_timeout_ms"),
            format!("between 100 and 600000 ms, got {}", self.request_timeout_ms),
        );
        issues.check(
            self.retry_min_ms >= 1 && self.retry_min_ms <= self.retry_max_ms,
            format!("{key}.retry_min_ms"),
            format!(
                "at least 1 ms and not above retry_max_ms ({}), got {}",
                self.retry_max_ms, self.retry_min_ms
            ),
        );
        issues.check(
            self.spool_max_bytes >= 1 << 20,
            format!("{key}.spool_max_bytes"),
            format!("at least 1048576 (1 MiB), got {}", self.spool_max_bytes),
        );
        issues.check(
            self.fsync_interval_ms >= 1,
            format!("{key}.fsync_interval_ms"),
            "at least 1 ms",
        );
    }

    /// Which path writes. The influxdb2 crate is the default; the direct HTTP path is taken
    /// only for what the crate cannot do (gzip, reading `Retry-After`). The direct path always
    /// honours `Retry-After`, whichever of the two keys selected it: it is the only path that
    /// can see the header, and ignoring a server's explicit pacing there would gain nothing.
    pub fn transport(&self) -> Transport {
        // The influxdb2 crate speaks only /api/v2/write.
        if self.gzip || self.honor_retry_after || self.api == InfluxApi::V1 {
            Transport::Http
        } else {
            Transport::Influxdb2
        }
    }

    pub(super) fn fsync_policy(&self) -> FsyncPolicy {
        match self.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms))
            }
            FsyncMode::Never => FsyncPolicy::Never,
        }
    }

    /// Reads the token from wherever the configuration says. Empty when none is configured
    /// (fine for VictoriaMetrics, refused by InfluxDB with 401).
    pub fn resolve_token(&self) -> Result<Secret, SinkError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| SinkError::Token {
                what: format!("reading token_file {}: {e}", path.display()),
            })?;
            return Ok(Secret(text.trim().to_string()));
        }
        if let Some(var) = &self.token_env {
            return std::env::var(var)
                .map(|t| Secret(t.trim().to_string()))
                .map_err(|_| SinkError::Token {
                    what: format!("environment variable {var} (token_env) is not set"),
                });
        }
        Ok(Secret(String::new()))
    }

    /// Reads the v1 password from wherever the configuration says; None when none is set.
    pub fn resolve_password(&self) -> Result<Option<Secret>, SinkError> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| SinkError::Token {
                what: format!("reading password_file {}: {e}", path.display()),
            })?;
            return Ok(Some(Secret(text.trim().to_string())));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(|t| Some(Secret(t.trim().to_string())))
                .map_err(|_| SinkError::Token {
                    what: format!("environment variable {var} (password_env) is not set"),
                });
        }
        Ok(None)
    }

    /// The write endpoint and its query parameters for the configured API.
    pub(super) fn endpoint(&self) -> (String, Vec<(String, String)>) {
        let base = self.url.trim_end_matches('/');
        match self.api {
            // The same URL the influxdb2 crate builds: base URL + fixed path.
            InfluxApi::V2 => (
                format!("{base}/api/v2/write"),
                vec![
                    ("org".into(), self.org.clone()),
                    ("bucket".into(), self.bucket.clone()),
                    ("precision".into(), "ns".into()),
                ],
            ),
            InfluxApi::V1 => {
                let mut q = vec![("db".into(), self.database.clone())];
                if !self.retention_policy.is_empty() {
                    q.push(("rp".into(), self.retention_policy.clone()));
                }
                // 1.x reads "n" and "ns" alike; InfluxDB 3 needs it spelled out, since it
                // otherwise guesses the precision from the timestamp's magnitude.
                q.push(("precision".into(), "ns".into()));
                (format!("{base}/write"), q)
            }
        }
    }
}

/// The code path that sends write requests; see [`InfluxConfig::transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `influxdb2::Client::write_line_protocol`: uncompressed, `Retry-After` not visible.
    Influxdb2,
    /// A direct `reqwest` POST: optional gzip, `Retry-After` honoured on 429 and 503.
    Http,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> InfluxConfig {
        toml::from_str(text).expect("valid toml")
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let c = parse("url = \"http://x:8086\"\nbucket = \"b\"\ntoken = \"s3cr3t\"\n");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn validate_catches_bad_url_and_settings() {
        let mut c = InfluxConfig::new("not a url", "");
        c.token = Some(Secret::new("a"));
        c.token_env = Some("X".into());
        c.batch_size = 0;
        let mut issues = Issues::default();
        c.validate("influx", &mut issues);
        let keys: Vec<_> = issues.into_vec().into_iter().map(|i| i.key).collect();
        assert_eq!(
            keys,
            [
                "influx.url",
                "influx.bucket",
                "influx.token",
                "influx.batch_size"
            ]
        );
        let mut issues = Issues::default();
        InfluxConfig::new("unix:/var/run/x", "b").validate("influx", &mut issues);
        assert!(!issues.is_empty(), "scheme without host is refused");
        let mut issues = Issues::default();
        InfluxConfig::new("https://influx.example:8086/", "b").validate("influx", &mut issues);
        assert!(issues.is_empty());
    }

    #[test]
    fn v1_keys_are_validated_with_the_key_named() {
        let keys = |text: &str| -> Vec<String> {
            let mut issues = Issues::default();
            parse(text).validate("influx", &mut issues);
            issues.into_vec().into_iter().map(|i| i.key).collect()
        };
        let url = "url = \"http://x:8086\"\n";
        // v1 needs a database and takes no bucket or org.
        assert_eq!(
            keys(&format!("{url}api = \"v1\"\nbucket = \"b\"\n")),
            ["influx.database", "influx.bucket"]
        );
        // A user without a password, or both a password and a token.
        assert_eq!(
            keys(&format!(
                "{url}api = \"v1\"\ndatabase = \"d\"\nusername = \"u\"\n"
            )),
            ["influx.username"]
        );
        assert_eq!(
            keys(&format!(
                "{url}api = \"v1\"\ndatabase = \"d\"\nusername = \"u\"\npassword = \"p\"\npassword_env = \"P\"\ntoken = \"t\"\n"
            )),
            ["influx.password", "influx.token"]
        );
        // v1 keys under v2 are refused rather than ignored.
        assert_eq!(
            keys(&format!(
                "{url}bucket = \"b\"\ndatabase = \"d\"\nretention_policy = \"r\"\n"
            )),
            ["influx.database", "influx.retention_policy"]
        );
        assert!(keys(&format!(
            "{url}api = \"v1\"\ndatabase = \"d\"\nretention_policy = \"autogen\"\nusername = \"u\"\npassword_file = \"/etc/p\"\n"
        ))
        .is_empty());
        assert!(keys(&format!(
            "{url}api = \"v1\"\ndatabase = \"d\"\ntoken_env = \"T\"\n"
        ))
        .is_empty());
        let bad = toml::from_str::<InfluxConfig>(&format!("{url}api = \"v3\"\n"))
            .expect_err("unknown api");
        assert!(bad.to_string().contains("v1"), "{bad}");
        // v1 always takes the direct HTTP path, which knows the /write endpoint.
        let c = parse(&format!(
            "{url}api = \"v1\"\ndatabase = \"d\"\nretention_policy = \"rp\"\n"
        ));
        assert_eq!(c.transport(), Transport::Http);
        let (u, q) = c.endpoint();
        assert_eq!(u, "http://x:8086/write");
        assert_eq!(
            q,
            [("db", "d"), ("rp", "rp"), ("precision", "ns")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<InfluxConfig, _> =
            toml::from_str("url = \"http://x\"\nbucket = \"b\"\nbatchsize = 1\n");
        assert!(r.is_err());
    }

    #[test]
    fn token_from_file_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tok");
        std::fs::write(&f, "abc\n").expect("write");
        let mut c = InfluxConfig::new("http://x", "b");
        c.token_file = Some(f);
        assert_eq!(c.resolve_token().expect("token").expose(), "abc");
        c.token_file = Some(dir.path().join("missing"));
        let e = c.resolve_token().expect_err("missing file");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn transport_follows_gzip_and_retry_after() {
        let mut c = InfluxConfig::new("http://x:8086", "b");
        assert_eq!(c.transport(), Transport::Influxdb2);
        c.gzip = true;
        assert_eq!(c.transport(), Transport::Http);
        c.gzip = false;
        c.honor_retry_after = true;
        assert_eq!(c.transport(), Transport::Http);
        let c = parse("url = \"http://x:8086\"\nbucket = \"b\"\ngzip = true\n");
        let mut issues = Issues::default();
        c.validate("influx", &mut issues);
        assert!(issues.is_empty(), "gzip = true is accepted");
    }
}
