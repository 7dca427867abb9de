//! Layering: defaults, then an optional YAML/TOML file, then `KUBEPULSE__*`
//! environment variables (`KUBEPULSE__PROBES__UDP__INTERVAL=500ms`).

use std::collections::HashMap;
use std::path::Path;

use config::{Config, Environment, File};

use super::settings::Settings;
use super::validate::{validate, ConfigError};

/// Loads settings from `path` (if any) and the process environment.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    load_from(path, env)
}

/// Loads settings from `path` (if any) and the given environment map, so
/// tests never touch the process environment.
pub fn load_from(
    path: Option<&Path>,
    env: HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    // Defaults are the first layer, so a file that sets only
    // `probes.udp.interval` keeps the default `probes.udp.timeout`.
    let mut b = Config::builder().add_source(Config::try_from(&Settings::default())?);
    if let Some(p) = path {
        b = b.add_source(File::from(p).required(true));
    }
    b = b.add_source(
        Environment::with_prefix("KUBEPULSE")
            .prefix_separator("__")
            .separator("__")
            .source(Some(env)),
    );
    let settings: Settings = b.build()?.try_deserialize()?;
    validate(&settings)?;
    Ok(settings)
}

/// Loads settings from YAML text over the defaults, without a file or
/// the environment (the fuzz target's entry; same rules as [`load_from`]).
#[cfg(any(test, fuzzing))]
pub(crate) fn load_yaml_str(text: &str) -> Result<Settings, ConfigError> {
    let b = Config::builder()
        .add_source(Config::try_from(&Settings::default())?)
        .add_source(File::from_str(text, config::FileFormat::Yaml));
    let settings: Settings = b.build()?.try_deserialize()?;
    validate(&settings)?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    struct Yaml(tempfile::NamedTempFile);

    fn file(contents: &str) -> Yaml {
        let mut f = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("temp file");
        f.write_all(contents.as_bytes()).expect("write");
        Yaml(f)
    }

    #[test]
    fn yaml_text_loads_like_a_file() {
        let s = load_yaml_str("probes:\n  udp:\n    interval: 250ms\n").expect("loads");
        assert_eq!(s.probes.udp.interval, Duration::from_millis(250));
        assert!(load_yaml_str("probes: [").is_err());
        assert!(load_yaml_str("nonsense_key: 1").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        let s = load_from(None, HashMap::new()).expect("defaults load");
        assert_eq!(s, Settings::default());
        assert_eq!(s.probes.udp.interval, Duration::from_secs(1));
        assert_eq!(s.probes.pmtu.interval, Duration::from_secs(600));
        // Time-bounded bursts: 250 ms, a byte cap of 250 ms at 100 Gbit/s,
        // and one agent's forward and reverse burst fit in half a slot, so
        // the pod and host halves never overlap.
        let b = &s.probes.bandwidth;
        assert_eq!(b.duration, Duration::from_millis(250));
        assert_eq!(b.byte_cap(), 3_125_000_000);
        assert!(b.slot_span() <= b.slots.slot / 2);
    }

    #[test]
    fn a_burst_too_long_for_its_slot_is_an_error() {
        let f = file("probes:\n  bandwidth:\n    duration: 1s\n    slots: {slot: 4s}\n");
        let err = load_from(Some(f.0.path()), HashMap::new()).expect_err("must fail");
        assert!(err.to_string().contains("probes.bandwidth.slots"), "{err}");
        let f = file("probes:\n  bandwidth:\n    duration: 5ms\n");
        let err = load_from(Some(f.0.path()), HashMap::new()).expect_err("must fail");
        assert!(
            err.to_string().contains("probes.bandwidth.duration"),
            "{err}"
        );
    }

    #[test]
    fn file_and_env_layer() {
        let f = file("probes:\n  udp:\n    interval: 250ms\nagent:\n  name: a\n  node: n1\n");
        let env = HashMap::from([(
            "KUBEPULSE__PROBES__TCP_CONNECT__INTERVAL".to_string(),
            "3s".to_string(),
        )]);
        let s = load_from(Some(f.0.path()), env).expect("load");
        assert_eq!(s.probes.udp.interval, Duration::from_millis(250));
        assert_eq!(s.probes.udp.timeout, Duration::from_secs(1), "default kept");
        assert_eq!(s.probes.tcp_connect.interval, Duration::from_secs(3));
        assert_eq!(s.agent.node, "n1");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let f = file("probes:\n  udpp:\n    interval: 1s\n");
        let err = load_from(Some(f.0.path()), HashMap::new()).expect_err("must fail");
        assert!(err.to_string().contains("udpp"), "{err}");
    }

    #[test]
    fn duration_without_unit_is_an_error() {
        let f = file("probes:\n  udp:\n    interval: 5\n    timeout: 1s\n");
        let err = load_from(Some(f.0.path()), HashMap::new()).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("interval") || msg.contains("unit"), "{msg}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let f = file("probes:\n  bandwidth:\n    max_rate_bits_per_second: 1000000000000\n");
        let err = load_from(Some(f.0.path()), HashMap::new()).expect_err("must fail");
        assert!(
            err.to_string()
                .contains("probes.bandwidth.max_rate_bits_per_second"),
            "{err}"
        );
        let f = file("discovery:\n  peers:\n    - {name: a, node: n, kind: pod, address: 127.0.0.1}\n    - {name: a, node: n, kind: pod, address: 127.0.0.2}\n");
        let err = load_from(Some(f.0.path()), HashMap::new()).expect_err("must fail");
        assert!(err.to_string().contains("duplicate peer"), "{err}");
    }

    #[test]
    fn plan_write_concurrency_is_bounded() {
        for bad in ["0", "65"] {
            let f = file(&format!(
                "controller:\n  plan:\n    write_concurrency: {bad}\n"
            ));
            let err = load_from(Some(f.0.path()), HashMap::new()).expect_err("must fail");
            assert!(
                err.to_string()
                    .contains("controller.plan.write_concurrency"),
                "{err}"
            );
        }
        let f = file("controller:\n  plan:\n    write_concurrency: 64\n");
        let s = load_from(Some(f.0.path()), HashMap::new()).expect("64 is allowed");
        assert_eq!(s.controller.plan.write_concurrency, 64);
    }

    #[test]
    fn bad_address_is_an_error() {
        let f =
            file("discovery:\n  peers:\n    - {name: a, node: n, kind: pod, address: not-an-ip}\n");
        assert!(load_from(Some(f.0.path()), HashMap::new()).is_err());
    }
}
