//! The GPUs' original power limits, recorded in the state directory before the daemon first
//! lowers one, so that a clean exit, a crash (`coolantd restore` in `ExecStopPost=`) or an
//! operator can put them back.

use crate::model::GpuKey;
use crate::units::Watts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One GPU's limit as it was before coolantd touched it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedLimit {
    pub host: String,
    pub index: u32,
    /// The UUID identifies the board even if NVML indices change across a reboot.
    pub uuid: String,
    pub original: Watts,
}

/// The file `<state_dir>/power-limits.json`.
#[derive(Debug)]
pub struct LimitStore {
    path: PathBuf,
    limits: BTreeMap<String, RecordedLimit>,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitStoreError {
    #[error("{path}: cannot {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a power-limit record: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl LimitStore {
    /// Opens the store, reading what an earlier run recorded (an earlier crash leaves it).
    pub fn open(state_dir: &Path) -> Result<LimitStore, LimitStoreError> {
        let path = state_dir.join("power-limits.json");
        let limits = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| LimitStoreError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(LimitStoreError::Io {
                    path,
                    what: "read",
                    source,
                })
            }
        };
        Ok(LimitStore { path, limits })
    }

    /// The recorded limits.
    pub fn recorded(&self) -> impl Iterator<Item = &RecordedLimit> {
        self.limits.values()
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Records a GPU's original limit unless one is already recorded (the first record is
    /// the true original; later ones would be coolantd's own caps). Durable before return.
    pub fn record(
        &mut self,
        key: &GpuKey,
        uuid: &str,
        original: Watts,
    ) -> Result<(), LimitStoreError> {
        if self.limits.contains_key(uuid) {
            return Ok(());
        }
        self.limits.insert(
            uuid.to_string(),
            RecordedLimit {
                host: key.host.clone(),
                index: key.index,
                uuid: uuid.to_string(),
                original,
            },
        );
        self.save()
    }

    /// Records several GPUs' original limits with a single durable write; GPUs already
    /// recorded keep their first record.
    pub fn record_all(
        &mut self,
        items: impl IntoIterator<Item = (GpuKey, String, Watts)>,
    ) -> Result<(), LimitStoreError> {
        let mut changed = false;
        for (key, uuid, original) in items {
            if !self.limits.contains_key(&uuid) {
                self.limits.insert(
                    uuid.clone(),
                    RecordedLimit {
                        host: key.host.clone(),
                        index: key.index,
                        uuid,
                        original,
                    },
                );
                changed = true;
            }
        }
        if changed {
            self.save()
        } else {
            Ok(())
        }
    }

    /// Forgets one GPU's record after its limit was restored.
    pub fn forget(&mut self, uuid: &str) -> Result<(), LimitStoreError> {
        if self.limits.remove(uuid).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), LimitStoreError> {
        let io = |what| {
            move |source| LimitStoreError::Io {
                path: self.path.clone(),
                what,
                source,
            }
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create the state directory"))?;
        }
        if self.limits.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove")(e)),
                _ => Ok(()),
            };
        }
        // Write a temporary file and rename it, so a crash never leaves a half-written record.
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&self.limits)
            .map_err(|e| io("encode")(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
        f.write_all(&body).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, &self.path).map_err(io("rename"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_record_wins_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("coolantd-limits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = GpuKey {
            host: "h".into(),
            index: 0,
        };
        let mut s = LimitStore::open(&dir).expect("open empty store");
        s.record(&key, "GPU-1", Watts(700.0)).expect("record");
        s.record(&key, "GPU-1", Watts(450.0))
            .expect("second record is ignored");
        let s2 = LimitStore::open(&dir).expect("reopen");
        let all: Vec<_> = s2.recorded().cloned().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].original, Watts(700.0));
        let mut s2 = s2;
        s2.forget("GPU-1").expect("forget");
        assert!(!dir.join("power-limits.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_record_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("coolantd-limits-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("power-limits.json"), b"{not json").expect("write");
        let e = LimitStore::open(&dir).expect_err("corrupt file must be refused");
        assert!(e.to_string().contains("power-limits.json"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
