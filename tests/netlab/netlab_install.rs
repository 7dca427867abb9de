//! The rendered install runs: what kubepulse ships (the chart's rendering,
//! or the kustomizations of `deploy/`) applied to an emulated 3-node
//! cluster on the network lab and run as shipped by the lab kubelet
//! (`kubepulse_testkit::install`), scraped by a real Prometheus that
//! discovers the pods through the API test server with the scrape job of
//! docs/deploy.md.

use kubepulse_testkit::install::Rendering;

/// The rendering under test: today the kustomizations of `deploy/` (the
/// agents and the controller, as docs/deploy.md applies them).
pub(crate) fn rendering() -> Rendering {
    Rendering::kustomize(&["deploy", "deploy/controller"])
}
