//! Numerical helpers: small dense linear algebra ([`linalg`]) and seeded random streams
//! ([`rng`]).
pub mod linalg;
pub mod rng;
