//! Shared test infrastructure of the controller tests: a fake apiserver and
//! a simulated kubelet.

#![allow(dead_code)]

pub mod apiserver;
pub mod kubelet;
