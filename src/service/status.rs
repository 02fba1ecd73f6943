//! `coolantd status`: the running daemon's state, read from its own HTTP endpoint
//! (`/status` and `/readyz`), so an operator need not know the URL or read JSON.

use crate::config::Config;
use crate::model::Snapshot;
use anyhow::Context as _;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The address to ask: `[http] listen`, with a wildcard address replaced by loopback.
pub fn endpoint(cfg: &Config) -> anyhow::Result<SocketAddr> {
    let http = cfg.http.clone().unwrap_or_default();
    anyhow::ensure!(
        cfg.http.is_some() && http.enabled,
        "{}: the HTTP endpoint is off ([http] is missing or enabled = false), so there is no \
         running state to read; add an [http] section and restart the daemon",
        cfg.path.display()
    );
    let mut addr = http
        .listen_addr()
        .with_context(|| format!("{}: http.listen", cfg.path.display()))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// Prints the daemon's state: a summary, or with `json` the `/status` document as is.
pub async fn status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let addr = endpoint(cfg)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let base = format!("http://{addr}");
    let body = client
        .get(format!("{base}/status"))
        .send()
        .await
        .with_context(|| {
            format!("no coolantd answers at {base} (http.listen in {}); is it running? (systemctl status coolantd)", cfg.path.display())
        })?
        .text()
        .await
        .context("reading /status")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let snap: Snapshot = serde_json::from_str(&body).context("decoding /status")?;
    let ready = match client.get(format!("{base}/readyz")).send().await {
        Ok(r) => r.text().await.unwrap_or_default().trim().to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    print!("{}", summary(&snap, &ready));
    Ok(())
}

/// The human-readable summary `coolantd status` prints.
pub fn summary(s: &Snapshot, ready: &str) -> String {
    let mut out = String::new();
    let f = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
    let _ = writeln!(
        out,
        "coolantd on {}/{}: {} ({} mode){}, tick {}",
        s.site,
        s.host,
        s.state,
        s.mode,
        if s.dry_run { ", DRY RUN" } else { "" },
        s.tick
    );
    let _ = writeln!(out, "ready: {ready}");
    let _ = writeln!(
        out,
        "set point {:.1} °C, controlled {}",
        s.setpoint,
        f(s.controlled, " °C")
    );
    for c in &s.cdus {
        let _ = writeln!(
            out,
            "cdu {}: supply {} return {} flow {} pump command {} feedback {}{}",
            c.name,
            f(c.supply, " °C"),
            f(c.return_, " °C"),
            f(c.flow, " l/min"),
            f(c.pump_command, " %"),
            f(c.pump_feedback, " %"),
            if c.faults.is_empty() {
                String::new()
            } else {
                format!(
                    " | faults: {}",
                    crate::service::http::summarize_faults(&crate::service::http::fault_lines(
                        &c.faults
                    ))
                    .join("; ")
                )
            }
        );
    }
    for g in &s.gpus {
        let _ = writeln!(
            out,
            "gpu {} ({}): core {} hbm {} power {} limit {}",
            g.key,
            g.name,
            f(g.core, " °C"),
            f(g.hbm, " °C"),
            f(g.power, " W"),
            f(g.limit, " W")
        );
    }
    if s.alarms.is_empty() {
        let _ = writeln!(out, "alarms: none");
    }
    for a in &s.alarms {
        let _ = writeln!(out, "alarm {:?} {}: {}", a.severity, a.id, a.message);
    }
    for d in &s.decisions {
        let verb = if s.dry_run { "would" } else { "did" };
        let _ = writeln!(out, "last tick {verb}: {d}");
    }
    out
}
