//! `coolantd run`: the service loop around [`Daemon::tick`] — the period timer, signals,
//! systemd notification, the HTTP endpoint and the live status line.

use super::{status_line, Daemon, Now, RunOptions};
use crate::config::Config;
use crate::service::http::{self, Health};
use crate::service::notify::Notifier;
use anyhow::Context as _;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

/// How long shutdown may take before the daemon gives up on flushing sinks.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// A lost notification is not worth stopping for: systemd notices a silent daemon through
/// its watchdog, which is the point of the watchdog.
fn tell(r: std::io::Result<()>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify message not delivered");
    }
}

/// Refuses a control period the systemd watchdog this daemon runs under cannot tolerate:
/// it is fed once per tick, and a tick that overruns skips the next, so two pings may be
/// two periods apart. (`check-config` holds every period to the shipped unit's 10 s; this
/// catches a unit whose `WatchdogSec=` was lowered.)
fn fits_watchdog(
    cfg: &Config,
    watchdog: Option<Duration>,
) -> Result<(), crate::config::ConfigError> {
    let Some(wd) = watchdog else {
        return Ok(());
    };
    if cfg.control.period() * 2 <= wd {
        return Ok(());
    }
    Err(crate::config::ConfigError {
        file: cfg.path.clone(),
        issues: vec![crate::config::ConfigIssue {
            key: "control.period_ms".into(),
            expected: format!(
                "at most half of systemd's watchdog interval ({} ms, WatchdogSec= as \
                 WATCHDOG_USEC says), since the watchdog is fed once per tick; got {}",
                wd.as_millis(),
                cfg.control.period_ms
            ),
        }],
    })
}

/// The control period's timer, first firing at `start`. A tick that overruns skips the
/// ticks it missed rather than bunching them up.
pub(crate) fn period_timer(period: Duration, start: tokio::time::Instant) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(start, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    timer
}

/// When the period timer first fires: now, or for a rack controller at its phase on the
/// wall clock's period grid (`remote::phase`), so that it decides shortly after its agents
/// publish. Read once per timer: the monotonic timer then keeps the grid (NTP slews both
/// clocks alike; a stepped wall clock is followed at the next reload that sets a timer).
pub(crate) fn first_tick(period: Duration, phase: Option<Duration>) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let Some(offset) = phase else { return now };
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    now + crate::remote::phase::until_phase(wall, period, offset)
}

/// Runs the daemon until SIGTERM or SIGINT. Returns after the outputs are in their safe state.
pub async fn run(config_path: &Path, opts: RunOptions) -> anyhow::Result<()> {
    // Handlers first: SIGHUP's default action is to terminate, so a `systemctl reload` (or a
    // log rotation script) that arrives while the daemon is still starting (simulator, sinks,
    // NVML init) would otherwise kill it. Signals that arrive early wait for the loop.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let cfg = Config::load(config_path)?;
    let watchdog = crate::service::notify::watchdog_interval();
    fits_watchdog(&cfg, watchdog)?;
    // The text the running configuration came from, so a reload can say what changed.
    let mut config_text = std::fs::read_to_string(config_path).unwrap_or_default();
    let time_scale = cfg.simulator.as_ref().map_or(1.0, |s| s.time_scale);
    let restore_on_exit = cfg.control.restore_limits_on_exit();
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable; systemd will not hear from this daemon");
        Notifier::disabled()
    });
    let mut daemon = Daemon::build(cfg, &opts).await?;
    // With a sped-up simulator the control period in wall time shrinks by the same factor,
    // and the core sees simulated time, so its dynamics stay those of the real plant.
    let mut wall_period = daemon.wall_period();
    let health = Arc::new(Health::new(wall_period));

    let http_task = match daemon.config().http.clone().filter(|h| h.enabled) {
        Some(h) => {
            // Bound before READY=1, so a port already in use fails the start visibly.
            let listener = h.bind().await?;
            let snaps = daemon.snapshots();
            let health = health.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = http::serve(listener, snaps, health).await {
                    tracing::error!(error = %e, "HTTP endpoint stopped");
                }
            }))
        }
        None => None,
    };

    let mut timer = period_timer(wall_period, first_tick(wall_period, daemon.rack_phase()));
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut ready_sent = false;
    let mut last_logged_state = None;
    let mut last_log = Instant::now();

    loop {
        tokio::select! {
            // Signals before the timer: at a short period (or a sped-up simulator) the timer
            // is nearly always ready, and a random pick would delay shutdown by extra ticks.
            biased;
            _ = sigterm.recv() => { tracing::info!("SIGTERM: leaving safely"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: leaving safely"); break; }
            _ = sighup.recv() => {
                // RELOADING=1 … READY=1 only once start-up is over: a READY=1 before the first
                // tick would tell systemd the daemon is up before it has controlled anything.
                if ready_sent {
                    tell(notifier.reloading());
                }
                let new_text = std::fs::read_to_string(config_path).unwrap_or_default();
                let loaded = Config::load(config_path).and_then(|c| fits_watchdog(&c, watchdog).map(|()| c));
                match loaded.map_err(anyhow::Error::from).and_then(|c| daemon.reload(c)) {
                    Ok(()) => {
                        let changes = crate::config::changed_keys(&config_text, &new_text);
                        if changes.is_empty() {
                            tracing::info!(file = %config_path.display(), "configuration reloaded: nothing changed");
                        } else {
                            tracing::info!(file = %config_path.display(), changes = %changes.join("; "), "configuration reloaded: {} change(s)", changes.len());
                        }
                        config_text = new_text;
                        // control.period_ms changes live: a new timer from now on, so the
                        // next tick comes one new period after the reload.
                        let new_period = daemon.wall_period();
                        if new_period != wall_period {
                            tracing::info!(
                                from_ms = wall_period.as_millis() as u64,
                                to_ms = new_period.as_millis() as u64,
                                "control period changed"
                            );
                            wall_period = new_period;
                            let next = match daemon.rack_phase() {
                                Some(phase) => first_tick(wall_period, Some(phase)),
                                None => tokio::time::Instant::now() + wall_period,
                            };
                            timer = period_timer(wall_period, next);
                            health.set_period(wall_period);
                        }
                    }
                    Err(e) => tracing::error!(file = %config_path.display(), error = %e, "reload refused; the running configuration stays"),
                }
                if ready_sent {
                    tell(notifier.ready());
                }
            }
            _ = timer.tick() => {
                // The tick's time, read here once: plant time (scaled monotonic), wall time
                // for the points, and the real start its CDU budget counts from.
                let t0 = Instant::now();
                let now = Now {
                    mono: t0.duration_since(start).mul_f64(time_scale),
                    wall: SystemTime::now(),
                    started: t0,
                };
                let snap = daemon.tick(now).await;
                let took = t0.elapsed();
                health.tick(took);
                // The loop is up; whether the inputs are valid is `snap.ready`, which
                // `/readyz` reads from the snapshot with its reason.
                health.set_ready(true);
                // A tick that completes is a healthy loop; the watchdog is only fed after one,
                // so a hung loop gets the daemon restarted by systemd.
                tell(notifier.watchdog());
                let mut line = status_line(&snap);
                // A rehearsal's outputs look live; every status line says they are simulated.
                if daemon.rehearsal().is_some() {
                    line.push_str(" REHEARSAL (simulated CDUs and GPUs)");
                }
                if !ready_sent {
                    tell(notifier.ready());
                    ready_sent = true;
                    tracing::info!(period_ms = daemon.config().control.period_ms, "first control tick done; ready");
                }
                if snap.tick % 10 == 1 {
                    tell(notifier.status(&line));
                }
                if tty {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{line}");
                    let _ = err.flush();
                } else if last_logged_state != Some(snap.state) || last_log.elapsed() >= Duration::from_secs(60) {
                    tracing::info!(state = %snap.state, mode = %snap.mode, "{line}");
                    last_logged_state = Some(snap.state);
                    last_log = Instant::now();
                }
            }
        }
    }
    if tty {
        eprintln!();
    }
    health.set_stopping();
    tell(notifier.stopping());
    daemon.leave_safely(restore_on_exit).await;
    if let Some(t) = http_task {
        t.abort();
    }
    daemon.shutdown(SHUTDOWN_DEADLINE).await;
    Ok(())
}
