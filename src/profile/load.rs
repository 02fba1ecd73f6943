//! Loading the firmware profiles one configuration uses, from the profiles folder, with
//! errors that name the configuration key that asked for each one. The checks that need the
//! rest of the configuration (read plan against the sample age, set point against the
//! boards) are the service's preflight (`service::preflight::load_profiles`), which calls this.

use super::cdu::CduProfile;
use super::gpu::GpuProfiles;
use crate::model::Role;
use crate::validate::{ConfigError, ConfigIssue};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The firmware profiles one configuration uses.
pub struct LoadedProfiles {
    pub gpu: GpuProfiles,
    /// Each CDU's profile, by the CDU's name.
    pub cdu: BTreeMap<String, Arc<CduProfile>>,
}

/// Loads every GPU profile in `dir/gpu` and the profile of each CDU in `cdus` (its name and
/// its profile's name, in configuration order, so `cdu[i]` names the key), checks that each
/// maps `required_roles` and passes `check_cdu`, and that `default_gpu_profile` exists.
/// `file` is the configuration file the errors name.
pub fn load_profiles(
    dir: &Path,
    file: &Path,
    cdus: &[(&str, &str)],
    required_roles: &[Role],
    default_gpu_profile: Option<&str>,
    mut check_cdu: impl FnMut(usize, &CduProfile) -> Result<(), ConfigError>,
) -> Result<LoadedProfiles, ConfigError> {
    let gpu = GpuProfiles::load_dir(&dir.join("gpu"))?;
    let mut cdu = BTreeMap::new();
    for (i, (name, profile)) in cdus.iter().enumerate() {
        let path = dir.join("cdu").join(format!("{profile}.toml"));
        if !path.exists() {
            return Err(ConfigError {
                file: file.to_path_buf(),
                issues: vec![ConfigIssue {
                    key: format!("cdu[{i}].profile"),
                    expected: format!(
                        "the name of a CDU profile in {}, but {} does not exist",
                        dir.join("cdu").display(),
                        path.display()
                    ),
                }],
            });
        }
        let p = CduProfile::load(&path)?;
        p.require_roles(required_roles)?;
        check_cdu(i, &p)?;
        cdu.insert(name.to_string(), Arc::new(p));
    }
    if let Some(name) = default_gpu_profile {
        if gpu.by_name(name).is_none() {
            return Err(ConfigError {
                file: file.to_path_buf(),
                issues: vec![ConfigIssue {
                    key: "gpus.default_profile".into(),
                    expected: format!(
                        "the name of a GPU profile in {}, got `{name}`",
                        dir.join("gpu").display()
                    ),
                }],
            });
        }
    }
    Ok(LoadedProfiles { gpu, cdu })
}
