//! Firmware profiles: CDU register maps and GPU model facts, loaded from `firmware-profiles/`.

pub mod cdu;
pub mod gpu;
pub mod load;
pub mod thermal;

pub use cdu::{ByteOrder, CduProfile, DataType, Register, RegisterKind};
pub use load::{load_profiles, LoadedProfiles};
