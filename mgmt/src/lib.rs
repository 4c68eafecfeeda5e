//! Shoji's management endpoint, for the data-centre administrator who has no login on the guest.
//!
//! Shoji owns an address of its own on the NIC it shares with the guest (`mgmt_ip`, `mgmt_mac`
//! in `shoji.cfg`): frames for it are taken out of the receive path before the guest's policy
//! sees them ([`guard`]), fed to a smoltcp interface, and answered through Shoji's own transmit
//! buffers. On it runs a small HTTP/1.1 server ([`server`], [`http`]) with the administrator's
//! functions; every request that reads or changes the guest's state is signed with the admin
//! key ([`auth`]), and metrics use the Prometheus text format ([`prom`]). The crate is `no_std`,
//! allocates only when it is set up (from the hypervisor's heap), and knows nothing of VMX or the e1000: the hypervisor feeds it
//! frames and a clock and implements [`server::Backend`] over its counters and policy engine.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod auth;
pub mod guard;
pub mod http;
pub mod prom;
pub mod server;
pub mod settings;

pub use guard::{Guard, RxClass};
pub use server::{Backend, Server};
pub use settings::Settings;
