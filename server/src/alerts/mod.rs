//! Alerts: the rules that watch every host's reports, their settings, and what an alert is.

pub mod config;
pub mod engine;
pub mod fleet;
pub mod hysteresis;
pub mod matcher;
pub mod model;
pub mod routing;
pub mod rules;
pub mod settings;
