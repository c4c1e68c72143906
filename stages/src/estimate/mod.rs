//! Duration estimates: what each stage computes ([`workload`]), how fast a model trains or
//! evaluates on a device ([`throughput`]: measured, kept in a table by configuration, and the
//! `bench-train` benchmark), and the two multiplied ([`duration`]); [`preflight`] checks the
//! datasets a recipe reads before anything runs.
pub mod duration;
pub mod preflight;
pub mod throughput;
pub mod workload;
