//! Roles: wiring only. `agent` runs one agent; `local` runs several agents
//! on loopback in one process with one `/metrics`.

pub mod agent;
pub mod controller;
pub mod local;
