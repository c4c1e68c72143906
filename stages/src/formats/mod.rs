//! Output formats other tools read: `.npy` arrays ([`npy`]) and pretty JSON files ([`json`]).
pub mod json;
pub mod npy;
