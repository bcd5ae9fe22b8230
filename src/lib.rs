//! tailguard: an admission webhook for Tailscale workloads.
//!
//! The pure core (`workload`, `tailscale`, `security`, `expansion`, `rules`,
//! `admission`, `audit`, `check`, `inject`, `config`) never does I/O;
//! `server`, `cluster` and `cli` are thin adapters.
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod catalog;
pub mod certs;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod expansion;
pub mod image;
pub mod inject;
pub mod manifest;
pub mod memo;
pub mod mode;
pub mod namespace;
pub mod policy;
pub mod rules;
pub mod security;
pub mod server;
pub mod tailscale;
pub mod workload;
