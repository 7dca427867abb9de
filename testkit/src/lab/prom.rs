//! Scraping agents inside lab namespaces: the kit's [`Scrape`] and HTTP
//! client, entered from the namespace the agent listens in.

use std::net::SocketAddr;

pub use crate::scrape::{bucket_delta, parse, quantile, Sample, Scrape};

/// GETs `path` from `addr` (the caller's thread must be in the right
/// namespace). Returns the body; a status other than 200 is an error.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    crate::http::get_ok(addr, path)
}

/// Scrapes `/metrics` at `addr` from inside namespace `ns`.
pub fn scrape(ns: &str, addr: SocketAddr) -> std::io::Result<Scrape> {
    super::netlab::in_ns(ns, move || http_get(addr, "/metrics")).map(|b| parse(&b))
}
