//! Duration estimates: what each stage computes ([`workload`]), how fast a model trains or
//! evaluates on a device ([`throughput`]), and the two multiplied ([`duration`]).
pub mod duration;
pub mod preflight;
pub mod throughput;
pub mod workload;
