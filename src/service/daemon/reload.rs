//! A new configuration applied without dropping the control loop (SIGHUP): what changes
//! live, what needs a restart and says so.

use super::*;

impl Daemon {
    /// Applies a new configuration without dropping the control loop. The control section
    /// and the CDU profiles change live; sink and simulator changes need a restart, and the
    /// log says so.
    pub fn reload(&mut self, new: Config) -> anyhow::Result<()> {
        // A rehearsal's CDU clients point at its simulated servers; a reload would build
        // them from the file again, so it is refused as a whole.
        anyhow::ensure!(
            self.rehearsal.is_none(),
            "a rehearsal does not reload its configuration; stop it and start it again"
        );
        let profiles = load_profiles(&new)?;
        // Whether anything may be written at all, and what the control core was built for,
        // are not changed under a running loop: half-applying them would be worse than a
        // restart, so such a reload is refused as a whole.
        anyhow::ensure!(
            new.site.dry_run == self.cfg.site.dry_run,
            "site.dry_run changed; dry-run is switched by a restart (systemctl restart coolantd), \
             never by a reload"
        );
        // The hosts a CDU cools may change by reload (a rack's hosts added or removed); the
        // rest of what the control core was built for may not.
        let without_hosts = |v: Vec<CduSetup>| -> Vec<CduSetup> {
            v.into_iter()
                .map(|c| CduSetup {
                    hosts: Vec::new(),
                    ..c
                })
                .collect()
        };
        let new_setups = cdu_setups(&new, &self.host, &profiles);
        anyhow::ensure!(
            without_hosts(new_setups.clone())
                == without_hosts(cdu_setups(
                    &self.cfg,
                    &self.host,
                    &self.running_cdu_profiles()
                )),
            "the CDUs, or their profiles' roles or pump limits changed; restart to apply (a \
             reload may change addresses, timeouts, the hosts a CDU cools and [control])"
        );
        let new_remote = new.remote_hosts();
        anyhow::ensure!(
            self.rack.is_some() || new_remote.is_empty(),
            "a CDU now cools other hosts ({}); the rack's MQTT session starts with the \
             daemon: restart to apply",
            new_remote.join(", ")
        );
        anyhow::ensure!(
            new_remote.is_empty() || new.rack_or_default() == self.cfg.rack_or_default(),
            "[rack] changed; restart to apply (a reload may add and remove hosts)"
        );
        self.controller
            .check_reload(&new.control)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if new.site.host != self.cfg.site.host
            || new.site.state_dir != self.cfg.site.state_dir
            || new.gpus != self.cfg.gpus
            || new.simulator != self.cfg.simulator
        {
            tracing::warn!("site.host, site.state_dir, [gpus] or [simulator] changed: these take effect after a restart");
        }
        // A changed address, unit id or timeout needs a new client, like a changed profile.
        if new
            .cdus
            .iter()
            .map(|c| (&c.name, &c.transport, &c.profile, c.unit_id, c.timeout_ms))
            .ne(self
                .cfg
                .cdus
                .iter()
                .map(|c| (&c.name, &c.transport, &c.profile, c.unit_id, c.timeout_ms)))
            || profiles.cdu.iter().any(|(n, p)| {
                self.links
                    .iter()
                    .find(|c| c.name() == n)
                    .is_none_or(|c| **c.profile() != **p)
            })
        {
            // The old pollers end at their next step (a request in progress is cut short).
            self.fail_pending_writes("not written: the CDU connection was rebuilt by a reload");
            self.link_generation += 1;
            self.links = spawn_links(&new.cdus, &profiles, self.link_generation, &self.reports_tx);
            tracing::info!(
                cdus = self.links.len(),
                "CDU connections rebuilt from the new configuration"
            );
        }
        self.controller.reconfigure(&new.control);
        for c in new_setups {
            self.controller.set_cdu_hosts(&c.name, c.hosts);
        }
        if let Some(rack) = self.rack.as_mut() {
            if new_remote != self.cfg.remote_hosts() {
                tracing::info!(hosts = ?new_remote, "rack: hosts changed by the reload");
            }
            rack.set_hosts(new_remote);
        }
        // Compared by value: their Debug output hides secrets, so a changed password or token
        // would not show there.
        if new.influx != self.cfg.influx || new.mqtt != self.cfg.mqtt || new.http != self.cfg.http {
            tracing::warn!("[influx], [mqtt] or [http] changed: these take effect after a restart");
        }
        self.cfg = new;
        self.gpu_profiles = profiles.gpu;
        Ok(())
    }

    /// The CDU profiles the running clients hold (the files may have changed on disk since
    /// start-up), to compare a reload against.
    fn running_cdu_profiles(&self) -> LoadedProfiles {
        LoadedProfiles {
            gpu: GpuProfiles::from_profiles(Vec::new()),
            cdu: self
                .links
                .iter()
                .map(|c| (c.name().to_string(), c.profile().clone()))
                .collect(),
        }
    }
}
