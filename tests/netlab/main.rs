//! Integration tests in the root network-namespace lab
//! (`kubepulse_testkit::lab`): agents in namespaces, delay lines, tc, nft.

mod netlab_alerts;
mod netlab_burst_guard;
mod netlab_dns_apiserver;
mod netlab_fixture;
mod netlab_install;
mod netlab_install_image;
mod netlab_latency;
mod netlab_lifecycle;
mod netlab_loss;
mod netlab_paths;
mod netlab_rate;
mod netlab_report;
