//! placeholder
pub mod auth;
pub mod ratelimit;
