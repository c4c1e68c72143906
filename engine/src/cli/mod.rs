//! The `pipeline` command line: [`main`] parses the arguments, runs one command with one
//! [`shell::Shell`] for its output, and maps the outcome to the exit status ([`exit`]).
mod app;
mod args;
mod bench;
mod commands;
pub mod exit;
mod external;
mod loading;
mod metrics;
mod remote;
pub mod shell;
mod slurm;

pub use app::main;
