//! Duration estimates: what each stage computes ([`workload`]) and how fast a model trains or
//! evaluates on a device ([`throughput`]).
pub mod throughput;
pub mod workload;
