//! Test support shared by the agent's and the server's integration tests: an isolated network
//! namespace, sockets in known TCP states, and `ss` as the reference count.
//!
//! Only tests depend on this crate.

pub mod command;
pub mod netns;
pub mod sockets;
pub mod ss;

pub use netns::IsolatedNamespace;
pub use sockets::{Held, SETTLE_TIMEOUT, open_known_states};
pub use ss::{plus, show, ss_counts, wait_until_settled};
