//! Integration tests that run the `kubepulse` binary as child processes
//! (agents, controller, local mode, the report command, the live page).

mod agent_burst_key;
mod agent_process;
mod controller_process;
mod k8s_agent;
mod local_mode;
mod page;
mod report;
