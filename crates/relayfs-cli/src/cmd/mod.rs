//! One module per subcommand.

pub mod bench;
pub mod blktrace;
pub mod cat;
pub mod decode;
pub mod demo;
pub mod ls;
pub mod pull;
pub mod record;
pub mod stat;
pub mod verify;
