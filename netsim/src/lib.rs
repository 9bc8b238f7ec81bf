//! netsim: runs real depotmesh nodes in a simulated yard on one machine, and the real decision
//! engines (link policy, transfer scheduling, campaign gates) across a flow-level model of a fleet
//! of up to 200K vehicles, so an operator knows a campaign's cellular cost and time to 99 % before
//! pressing deploy.
//!
//! It must never carry a decision rule of its own that the nodes do not run: every choice it
//! simulates comes from the same engines the depot cache and vehicle peer use. Runs take a seed and
//! are reproducible from it.
//!
//! Two commands: [`yard`] (`netsim yard`, real nodes on loopback) and [`fleet`] (`netsim fleet`,
//! the flow-level model of a whole fleet).

mod actor;
pub mod attackers;
pub mod chart;
pub mod compare;
pub mod fleet;
pub mod rogue;
pub mod yard;
