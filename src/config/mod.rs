//! Configuration: serde types ([`settings`]), file + environment layering
//! ([`load`]) and semantic validation ([`validate`]).

pub(crate) mod load;
pub(crate) mod reach;
pub mod settings;
pub mod validate;

pub use load::{load, load_from};
pub use reach::{ApiserverSettings, DnsSettings};
pub use settings::*;
pub use validate::ConfigError;
