//! Bounces and complaints in (issue 12): VERP return paths at delivery ([`verp`]), reading DSNs and ARF
//! reports ([`report`]) and applying them to their message and recipient ([`intake`]).

pub mod intake;
pub mod report;
pub mod verp;

pub use intake::{Intake, IntakeSettings};
pub use verp::Verp;
