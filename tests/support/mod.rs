//! Shared support for kubepulse's integration tests: scraping and parsing
//! `/metrics`, and running the real binary under a guard that kills it.

#![allow(dead_code)]

pub mod process;
pub mod scrape;
pub mod text;
