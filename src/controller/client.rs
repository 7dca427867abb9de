//! kube-rs clients. The sampler's client has retries off: kube's default
//! retry layer resends 429/503/504 up to 15 times honouring Retry-After, which
//! would hide throttling inside one slow sample. With it off every 429 is
//! observed (`code="4xx"`) and counted in `kubepulse_apiserver_throttled_total`.

use kube::{Client, Config};

use super::K8sError;

/// The client configuration: `api_url` if set (tests, `kubectl proxy`),
/// else kubeconfig, else in-cluster.
pub async fn config(api_url: &str) -> Result<Config, K8sError> {
    if api_url.is_empty() {
        Config::infer()
            .await
            .map_err(|e| K8sError::Config(e.to_string()))
    } else {
        let uri = api_url
            .parse()
            .map_err(|e| K8sError::Config(format!("api_url {api_url:?}: {e}")))?;
        Ok(Config::new(uri))
    }
}

/// The two clients of the controller: `watch` (retries on, for watches,
/// leader election and probe pods) and `sampler` (retries off).
#[derive(Clone)]
pub struct Clients {
    /// General client, kube's default retry policy.
    pub main: Client,
    /// apiserver latency sampler and probe POST/DELETE: no retries.
    pub sampler: Client,
}

impl Clients {
    /// Builds both clients from one configuration.
    pub fn new(config: &Config) -> Result<Self, K8sError> {
        let mut with_retry = config.clone();
        with_retry.default_retry = true;
        let mut no_retry = config.clone();
        no_retry.default_retry = false;
        Ok(Self {
            main: Client::try_from(with_retry)?,
            sampler: Client::try_from(no_retry)?,
        })
    }
}
